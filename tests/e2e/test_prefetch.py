"""Prefetch lists in ``index`` (``--prefetch-file``, ``--prefetch-files-json``) with the real soci and a real
registry: the SOCI index carries one prefetch artifact per layer holding listed files, whose spans are those
of the listed files (computed here from the tar that was built, or read with ``soci ztoc info``); listed files
in no indexed layer are reported; reuse gives the same artifacts; an index without the requested prefetch is
made again, one with it is left alone; a bad list is refused before any network work."""

from __future__ import annotations

import hashlib
import json
import posixpath
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.e2e.test_from_oci import write_layout
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import AMD64, ARM64, FileSpec, Image, LayerSpec, build_image, index_of
from wrapper.core.models import SOCI_INDEX_V1, SOCI_LAYER_DIGEST_ANNOTATION, SOCI_ZTOC
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci

PREFETCH = "application/vnd.amazon.soci.prefetch.v1+json"
SPAN = MIB  # --span-size: several spans per layer
MIN = MIB  # --min-layer-size: the small layer gets no zTOC

# The listed files, as a user writes them: absolute or not, uncleaned, a blank entry (soci drops it).
LISTED = [
    "/app/b.txt",
    "app/c.bin",
    "/lib/shared.so",
    "/usr//lib/./x.so",
    "  ",
    "/etc/small.conf",
    "/nope/missing",
]
NOT_FOUND = ["etc/small.conf", "nope/missing"]  # in a layer under --min-layer-size; in no layer at all


@dataclass
class Ctx:
    """What every test here takes: a directory, the registry and a client of it, soci, a seed of its own."""

    tmp_path: Path
    registry: RegistryServer
    client: RegistryClient
    soci_bin: str
    seed: int


@pytest.fixture
def ctx(
    tmp_path: Path, registry: RegistryServer, soci_bin: str, request: pytest.FixtureRequest
) -> Iterator[Ctx]:
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        yield Ctx(tmp_path, registry, client, soci_bin, seed_for(request))


def app_image(tmp_path: Path, seed: int, *, compress: bool) -> Image:
    """Three layers, bottom to top: the app (large), a library layer that overrides app/b.txt (large), and a
    small one (under --min-layer-size: no zTOC)."""
    kind: Literal["gzip"] | None = "gzip" if compress else None
    bottom = LayerSpec(
        0,
        files=(
            FileSpec("app/a.bin", 3 * MIB),
            FileSpec("app/b.txt", 1000),
            FileSpec("app/c.bin", 5 * MIB + 123),
            FileSpec("lib/shared.so", 100_000),
        ),
        compress=kind,
        seed=seed,
    )
    top = LayerSpec(
        0,
        files=(FileSpec("usr/lib/x.so", 2 * MIB), FileSpec("app/b.txt", 2000)),
        compress=kind,
        seed=seed + 1,
    )
    small = LayerSpec(0, files=(FileSpec("etc/small.conf", 4000),), compress=kind, seed=seed + 2)
    return build_image(tmp_path, [bottom, top, small])


def list_file(tmp_path: Path, paths: Sequence[str]) -> Path:
    path = tmp_path / "prefetch.json"
    path.write_text(json.dumps(list(paths)))
    return path


def index(
    soci_bin: str, ref: Reference | str, work: Path, *extra: str, as_json: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", str(MIN), "--span-size", str(SPAN),
        "--work-dir", str(work), *(["--json"] if as_json else []), *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def report_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def clean(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/")).lstrip("/")


def expected_artifacts(image: Image, listed: Sequence[str], indexed: set[str]) -> dict[str, bytes]:
    """What soci v0.15.0 writes for uncompressed tar layers, computed from the tars built here: each listed
    file belongs to the topmost indexed layer that holds it; its spans are its data's offset and end in that
    layer over the span size; a layer's spans are merged where they touch; per layer one compact JSON
    document. Layer digest -> artifact bytes."""
    offsets: dict[str, dict[str, tuple[int, int]]] = {}
    for layer in image.layers:
        assert layer.path is not None
        with tarfile.open(layer.path) as tar:
            offsets[layer.digest] = {
                m.name.rstrip("/"): (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()
            }
    spans: dict[str, list[tuple[int, int]]] = {}
    for path in (clean(p) for p in listed if p.strip()):
        for layer in reversed(image.layers):
            if layer.digest in indexed and path in offsets[layer.digest]:
                offset, size = offsets[layer.digest][path]
                spans.setdefault(layer.digest, []).append((offset // SPAN, (offset + size) // SPAN))
                break
    out: dict[str, bytes] = {}
    for digest, ranges in spans.items():
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        doc = {"version": "1.0", "prefetch_spans": [{"start_span": s, "end_span": e} for s, e in merged]}
        out[digest] = json.dumps(doc, separators=(",", ":")).encode()
    return out


def soci_index(client: RegistryClient, ref: Reference, report: dict[str, Any]) -> dict[str, Any]:
    entry = report["indexes"][0]
    doc: dict[str, Any] = client.get_manifest(ref, entry["soci_index_digest"]).json()
    return doc


def prefetch_in_registry(client: RegistryClient, ref: Reference, doc: dict[str, Any]) -> dict[str, bytes]:
    """The prefetch artifacts a SOCI index lists, fetched from the registry: layer digest -> bytes."""
    out: dict[str, bytes] = {}
    for entry in doc["layers"]:
        if entry["mediaType"] == PREFETCH:
            with client.open_blob(ref, entry["digest"]) as stream:
                body = b"".join(stream)
            assert "sha256:" + hashlib.sha256(body).hexdigest() == entry["digest"]
            out[entry["annotations"][SOCI_LAYER_DIGEST_ANNOTATION]] = body
    return out


def reported(report: dict[str, Any]) -> dict[str, str]:
    """The prefetch artifacts the report lists for the first platform: layer digest -> artifact digest."""
    return {p["layer"]: p["digest"] for p in report["indexes"][0]["prefetch"]}


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_v1_prefetch_artifacts_are_the_spans_of_the_listed_files(ctx: Ctx) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    image = app_image(tmp_path, ctx.seed, compress=False)  # uncompressed tar: spans are offsets
    ref = push(registry, client, "prefetch/v1", image)
    listed_json = list_file(tmp_path, LISTED[1:])
    report = report_of(
        index(
            soci_bin, ref, tmp_path / "w", "--prefetch-file", LISTED[0], "--prefetch-files-json", str(listed_json),
            "--overlap", "always",  # zTOCs built during the pull: the run's soci create adds the artifacts
        )
    )  # fmt: skip
    assert {x["during_pull"] for x in report["indexes"][0]["layers"] if x["ztoc"]} == {True}

    doc = soci_index(client, ref, report)
    assert doc["config"]["mediaType"] == SOCI_INDEX_V1
    large = {layer.digest for layer in image.layers[:2]}
    got = prefetch_in_registry(client, ref, doc)
    want = expected_artifacts(image, LISTED, large)
    assert set(want) == large  # both large layers hold listed files
    assert got == want  # byte for byte: the spans soci wrote are those of the listed files
    assert [json.loads(b)["version"] for b in got.values()] == ["1.0", "1.0"]
    # the zTOCs are still there, one per large layer, and the report tells zTOCs from prefetch artifacts
    assert sorted(
        e["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for e in doc["layers"] if e["mediaType"] == SOCI_ZTOC
    ) == sorted(large)
    entry = report["indexes"][0]
    assert entry["ztocs"] == 2
    assert {x["digest"]: x["ztoc"] for x in entry["layers"] if x["status"] != "skipped"}.keys() == large
    assert all(x["ztoc"] not in {digest_of(b) for b in got.values()} for x in entry["layers"])
    assert reported(report) == {layer: digest_of(body) for layer, body in got.items()}
    for artifact in entry["prefetch"]:
        ranges = json.loads(got[artifact["layer"]])["prefetch_spans"]
        assert artifact["ranges"] == len(ranges)
        assert artifact["spans"] == sum(r["end_span"] - r["start_span"] + 1 for r in ranges)
    assert entry["prefetch_not_found"] == NOT_FOUND
    assert report["prefetch_files"] == len(LISTED) - 1  # the blank entry is dropped


def test_v2_prefetch_artifacts_cover_the_listed_files(ctx: Ctx) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    image = app_image(tmp_path, ctx.seed, compress=True)
    ref = push(registry, client, "prefetch/v2", image)
    work = tmp_path / "w"
    report = report_of(
        index(
            soci_bin, ref, work, "--soci-version", "V2", "--output-tag", "soci",
            "--prefetch-files-json", str(list_file(tmp_path, LISTED)), "--keep-work-dir",
        )
    )  # fmt: skip
    out = Reference(ref.registry, ref.repository, tag="soci")
    doc = soci_index(client, out, report)
    got = prefetch_in_registry(client, out, doc)
    top, bottom = image.layers[1].digest, image.layers[0].digest
    assert set(got) == {top, bottom}
    assert reported(report) == {layer: digest_of(body) for layer, body in got.items()}
    assert report["indexes"][0]["prefetch_not_found"] == NOT_FOUND

    # Where each listed file is, span by span, as soci itself reads the zTOCs (gzip spans are not offsets).
    root = next(work.rglob("soci-root"))
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in doc["layers"]:
        if entry["mediaType"] == SOCI_ZTOC:
            info = subprocess.run(
                [soci_bin, "--root", str(root), "--content-store", "soci", "ztoc", "info", entry["digest"]],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            layer = entry["annotations"][SOCI_LAYER_DIGEST_ANNOTATION]
            files[layer] = {f["filename"]: f for f in json.loads(info.stdout)["files"]}
    where = {"app/b.txt": top, "usr/lib/x.so": top, "app/c.bin": bottom, "lib/shared.so": bottom}
    for name, layer in where.items():
        f = files[layer][name]
        ranges = json.loads(got[layer])["prefetch_spans"]
        assert any(r["start_span"] <= f["start_span"] and f["end_span"] <= r["end_span"] for r in ranges), (
            name
        )
    # and nothing else: every span prefetched holds a listed file
    for layer, body in got.items():
        wanted = {
            s
            for name, lay in where.items()
            if lay == layer
            for s in range(files[layer][name]["start_span"], files[layer][name]["end_span"] + 1)
        }
        fetched = {
            s for r in json.loads(body)["prefetch_spans"] for s in range(r["start_span"], r["end_span"] + 1)
        }
        assert fetched == wanted


def test_v2_tells_which_platform_lacks_a_listed_file(ctx: Ctx) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    """soci convert warns once per platform lacking a file, without naming it: the zTOCs' files tell."""
    seed = ctx.seed
    amd = LayerSpec(
        0, files=(FileSpec("app/c.bin", 2 * MIB), FileSpec("app/only-amd64.bin", 1000)), seed=seed
    )
    arm = LayerSpec(0, files=(FileSpec("app/c.bin", 2 * MIB),), seed=seed + 1)
    both = index_of(
        [build_image(tmp_path, [amd], platform=AMD64), build_image(tmp_path, [arm], platform=ARM64)]
    )
    ref = push(registry, client, "prefetch/platforms", both)
    listed = list_file(tmp_path, ["/app/only-amd64.bin", "/nope/missing", "/app/c.bin"])
    report = report_of(
        index(
            soci_bin, ref, tmp_path / "w", "--soci-version", "V2", "--output-tag", "soci", "--all-platforms",
            "--prefetch-files-json", str(listed),
        )
    )  # fmt: skip
    not_found = {i["platform"]: sorted(i["prefetch_not_found"]) for i in report["indexes"]}
    assert not_found == {
        "linux/amd64": ["nope/missing"],
        "linux/arm64/v8": ["app/only-amd64.bin", "nope/missing"],
    }
    assert [len(i["prefetch"]) for i in report["indexes"]] == [1, 1]


def test_a_listed_file_in_no_indexed_layer_is_reported(ctx: Ctx) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    image = app_image(tmp_path, ctx.seed, compress=True)
    ref = push(registry, client, "prefetch/missing", image)
    proc = index(
        soci_bin, ref, tmp_path / "w", "--prefetch-file", "/etc/small.conf", "--prefetch-file", "/app/c.bin",
        "--prefetch-file", "/nope/missing", as_json=False,
    )  # fmt: skip
    summary = " ".join(proc.stdout.split())
    assert "prefetch: 1 artifact" in summary
    assert "2 listed files in no indexed layer: etc/small.conf, nope/missing" in summary
    assert "prefetch: etc/small.conf is in no indexed layer" in proc.stderr  # as the run goes
    entries = client.get_referrers(ref, image.manifest.digest, artifact_type=SOCI_INDEX_V1)
    doc = client.get_manifest(ref, entries[-1].digest).json()
    assert set(prefetch_in_registry(client, ref, doc)) == {image.layers[0].digest}


def test_a_list_over_prefetch_max_files_is_sampled_with_a_warning(ctx: Ctx) -> None:
    """--prefetch-max-files 2 and 3 listed files: soci is given an even sample (the first and the second), as
    its not-found list shows (the third, also in no layer, is not in it); the warning and the counts say so."""
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    image = app_image(tmp_path, ctx.seed, compress=True)
    ref = push(registry, client, "prefetch/capped", image)
    listed = list_file(tmp_path, ["/nope/first", "/app/c.bin", "/nope/third"])
    proc = index(
        soci_bin, ref, tmp_path / "w", "--prefetch-files-json", str(listed), "--prefetch-max-files", "2"
    )
    report = report_of(proc)
    assert (report["prefetch_files"], report["prefetch_files_dropped"]) == (2, 1)
    assert report["indexes"][0]["prefetch_not_found"] == ["nope/first"]
    assert [p["layer"] for p in report["indexes"][0]["prefetch"]] == [image.layers[0].digest]
    [warning] = [w for w in report["warnings"] if "--prefetch-max-files" in w]
    assert "3 files, more than --prefetch-max-files 2: 1 left out" in warning
    assert f"warning: {warning}" in proc.stderr


def test_reused_ztocs_give_the_same_prefetch_artifacts(ctx: Ctx) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    image = app_image(tmp_path, ctx.seed, compress=True)
    ref = push(registry, client, "prefetch/reuse", image)
    cache = tmp_path / "cache"
    listed = ("--prefetch-files-json", str(list_file(tmp_path, LISTED)), "--cache-dir", str(cache))
    cold = report_of(index(soci_bin, ref, tmp_path / "w", *listed))
    warm = report_of(index(soci_bin, ref, tmp_path / "w", *listed, "--force"))
    assert {x["status"] for x in warm["indexes"][0]["layers"] if x["ztoc"]} == {"reused"}
    assert warm["pull"]["blobs_fetched"]["bytes"] < MIB  # no large layer was downloaded
    assert len(reported(cold)) == 2
    assert reported(warm) == reported(cold)
    assert warm["indexes"][0]["prefetch_not_found"] == cold["indexes"][0]["prefetch_not_found"] == NOT_FOUND
    assert warm["indexes"][0]["soci_index_digest"] == cold["indexes"][0]["soci_index_digest"]


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_an_index_without_the_requested_prefetch_is_made_again(ctx: Ctx, version: str) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    image = app_image(tmp_path, ctx.seed, compress=True)
    ref = push(registry, client, f"prefetch/again-{version.lower()}", image)
    v = ("--soci-version", version, *(["--output-tag", "soci"] if version == "V2" else []))
    first = report_of(index(soci_bin, ref, tmp_path / "w", *v))
    assert first["status"] == "indexed" and first["indexes"][0]["prefetch"] == []

    listed = ("--prefetch-files-json", str(list_file(tmp_path, LISTED)))
    second = report_of(index(soci_bin, ref, tmp_path / "w", *v, *listed))
    assert second["status"] == "indexed"  # the registry's index had no prefetch artifacts
    assert len(reported(second)) == 2
    assert second["push"] is not None
    assert second["pull"]["blobs_fetched"]["bytes"] < MIB  # the existing index's zTOCs served
    # V1: the new index is a second referrer, and the snapshotter takes the first: the user is told
    old = first["indexes"][0]["soci_index_digest"]
    # (and, once per V1 run, that a stock snapshotter does not load V1 lazily: wrapper.soci.pullmodes)
    assert [old in w for w in second["warnings"]] == ([True, False] if version == "V1" else [])

    third = report_of(index(soci_bin, ref, tmp_path / "w", *v, *listed))
    assert third["status"] == "already-indexed"  # the same list: the same prefetch artifacts
    assert third["push"] is None
    assert reported(third) == reported(second)
    assert third["indexes"][0]["soci_index_digest"] == second["indexes"][0]["soci_index_digest"]

    other = report_of(index(soci_bin, ref, tmp_path / "w", *v, "--prefetch-file", "/app/b.txt"))
    assert other["status"] == "indexed"  # another list: other artifacts
    assert set(reported(other)) == {image.layers[1].digest}

    plain = report_of(index(soci_bin, ref, tmp_path / "w", *v))
    assert plain["status"] == "already-indexed"  # without a list, any index counts


def test_many_images_and_from_oci_take_the_list(ctx: Ctx) -> None:
    tmp_path, registry, client, soci_bin = ctx.tmp_path, ctx.registry, ctx.client, ctx.soci_bin
    seed = ctx.seed
    images = [app_image(tmp_path, seed, compress=True), app_image(tmp_path, seed + 10, compress=True)]
    refs = [push(registry, client, f"prefetch/many-{i}", image) for i, image in enumerate(images)]
    listed = ("--prefetch-files-json", str(list_file(tmp_path, LISTED)))
    (tmp_path / "images.txt").write_text(f"{refs[1]}\n")
    batch = report_of(
        index(soci_bin, refs[0], tmp_path / "w", "--from-file", str(tmp_path / "images.txt"), *listed)
    )
    assert [r["status"] for r in batch["images"]] == ["indexed", "indexed"]
    for result, image in zip(batch["images"], images, strict=True):
        assert set(reported(result)) == {image.layers[0].digest, image.layers[1].digest}
        assert result["indexes"][0]["prefetch_not_found"] == NOT_FOUND

    layout = write_layout(tmp_path / "layout", [(app_image(tmp_path, seed + 20, compress=True), "1.0")])
    dest = Reference(registry.host, "prefetch/local", tag="1.0")
    local = report_of(index(soci_bin, dest, tmp_path / "w", "--from-oci", str(layout), *listed))
    assert len(reported(local)) == 2
    assert local["indexes"][0]["prefetch_not_found"] == NOT_FOUND


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read --prefetch-files-json"),
        ('["/app/a", ', "is not valid JSON"),
        ('{"files": ["/app/a"]}', "holds dict, not an array of file paths"),
        ('["/app/a", 3]', "holds an array with a non-string element"),
    ],
)
def test_a_bad_prefetch_list_exits_2_before_any_network_work(
    tmp_path: Path, content: str | None, words: str
) -> None:
    path = tmp_path / "list.json"
    if content is not None:
        path.write_text(content)
    # a registry nobody listens on: any network work would fail otherwise (exit 5), and take longer
    proc = run_cli("index", "127.0.0.1:9/app:1", "--prefetch-files-json", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soci-wrapper: error: ") and words in lines[0], lines
    assert str(path) in lines[0]
    assert "Traceback" not in proc.stderr

"""``index --record-prefetch`` end to end: real containerd, runc and its shim, a real registry behind a recording
proxy (tests/proxy.py), the real soci, and for the check of what the consumer does, the real
soci-snapshotter-grpc.

The image is runnable and made of uncompressed tar layers, so that a span is a fixed range of the layer's bytes
(``--span-size 1MiB``): a shell layer (Debian's busybox-static, indexed), a 24 MiB layer nobody reads, and an
app layer whose two read files sit after 3 MiB of bytes nobody reads. The recorded start opens exactly
``RECORDED``; the prefetch artifacts pushed must be the spans of those files, computed here from the tars.
Afterwards nothing of a run may be left: no process, no mount, no file in the work directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_startup
from tests.e2e.test_from_oci import write_layout
from tests.e2e.test_prefetch import PREFETCH, SPAN, digest_of, expected_artifacts, prefetch_in_registry
from tests.e2e.test_startup import (
    APPLETS,
    BUSYBOX,
    DEFAULT_COMMAND,
    RECORDED,
    _terminate_mid_run,
)
from tests.fixtures.deps import unavailable
from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.snapshotter import snapshotter_program
from tests.helpers import MIB, processes, run_cli
from tests.imagefactory import FileSpec, Image, LayerSpec, build_image, push_image
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.core.models import SOCI_INDEX_V1, SOCI_INDEX_V2, SOCI_LAYER_DIGEST_ANNOTATION
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci

MIN = MIB  # --min-layer-size: the 2 MiB shell layer gets a zTOC too
SIZES = ("--min-layer-size", str(MIN), "--span-size", str(SPAN))


def _layers() -> list[LayerSpec]:
    if not BUSYBOX.is_file():
        unavailable("Debian's busybox-static is not installed (/bin/busybox): run scripts/bootstrap.sh")
    shell = (
        FileSpec("bin/busybox", 0, 0o755, data=BUSYBOX.read_bytes()),
        *(FileSpec(f"bin/{name}", 0, link="busybox") for name in APPLETS),
        FileSpec("etc/passwd", 0, data=b"root:x:0:0:root:/root:/bin/sh\n"),
        FileSpec("etc/group", 0, data=b"root:x:0:\n"),
    )
    app = (
        FileSpec("app/before.bin", 3 * MIB),  # spans 0-2: never read
        FileSpec("app/read-1.txt", 0, data=b"one\n" * 1000),
        FileSpec("app/read-2.txt", 0, data=b"two\n" * 1000),
        FileSpec("app/unread.bin", 6 * MIB),
    )
    return [
        LayerSpec(0, files=shell, compress=None, seed=8101),
        LayerSpec(24 * MIB, compress=None, seed=8102),
        LayerSpec(0, files=app, compress=None, seed=8103),
    ]


@dataclass
class World:
    registry: RegistryServer
    image: Image

    def push(self, repo: str) -> Reference:
        with RegistryClient(CredentialStore(use_ecr=False), plain_http=True) as client:
            ref = Reference(self.registry.host, repo, tag="v1")
            push_image(client, ref, self.image)
        return ref


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    programs = [name for name in ("runc", "containerd-shim-runc-v2") if shutil.which(name) is None]
    if os.geteuid() != 0 or programs:
        unavailable(f"the recorded start runs a container: it needs root and runc (missing: {programs})")
    base = tmp_path_factory.mktemp("record-prefetch")
    image = build_image(base / "layers", _layers(), run_config={"Cmd": DEFAULT_COMMAND, "Env": ["PATH=/bin"]})
    registry = start_registry(base / "registry")
    try:
        yield World(registry, image)
    finally:
        registry.stop()


@pytest.fixture
def proxy(world: World) -> Iterator[HttpProxy]:
    """The registry behind a proxy that keeps every manifest PUT's body (it refuses none)."""
    with HttpProxy(world.registry.host) as p:
        p.refuse_body(r"/manifests/", lambda body: False, 400, method="PUT")
        yield p


# The run's --work-dir: empty afterwards, with no process or mount of the run left (test_startup's fixture).
work = test_startup.work


def _via(proxy: HttpProxy, ref: Reference) -> Reference:
    return Reference(proxy.host, ref.repository, tag=ref.tag)


def _index(ref: Reference, work: Path, soci_bin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "index", str(ref), "--record-prefetch", "--soci-bin", soci_bin, *SIZES, "--work-dir", str(work),
        "--json", *extra,
    )  # fmt: skip


def soci_indexes_put(requests: list[RecordedRequest]) -> list[dict[str, Any]]:
    """The SOCI index manifests (v1 or v2) the registry was sent, in the order they were PUT."""
    found = []
    for request in requests:
        if request.method != "PUT" or "/manifests/" not in request.path or request.request_body is None:
            continue
        doc = json.loads(request.request_body)
        kind = doc.get("artifactType") or doc.get("config", {}).get("mediaType")
        if kind in (SOCI_INDEX_V1, SOCI_INDEX_V2):
            found.append(doc)
    return found


# -- index --record-prefetch: record, index with the list, push once ------------------------------------------------
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_record_prefetch_pushes_one_index_whose_prefetch_spans_are_the_recorded_files(
    world: World, proxy: HttpProxy, work: Path, soci_bin: str, version: str
) -> None:
    ref = _via(proxy, world.push(f"record/{version.lower()}"))
    v2 = ("--soci-version", "V2", "--output-tag", "soci") if version == "V2" else ()
    proc = _index(ref, work, soci_bin, *v2)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    recorded = report["recorded"]
    assert recorded["files"] == RECORDED and recorded["count"] == len(RECORDED)
    assert recorded["args"] == DEFAULT_COMMAND and recorded["platform"] == "linux/amd64"
    assert recorded["image"] == str(ref.with_digest(world.image.digest)), "started by digest"
    assert 0 < recorded["pull_seconds"] + recorded["ready_seconds"] <= recorded["seconds"]
    assert report["stages"]["record"] >= recorded["seconds"] - 0.01
    assert report["prefetch_files"] == len(RECORDED)
    assert report["status"] == "indexed"

    # The registry saw one SOCI index, and it carries the prefetch artifacts: none without was ever visible.
    (pushed,) = soci_indexes_put(proxy.requests)
    assert sum(1 for layer in pushed["layers"] if layer["mediaType"] == PREFETCH) == 2
    entry = report["indexes"][0]
    out = ref if version == "V1" else Reference(ref.registry, ref.repository, tag="soci")
    with RegistryClient(CredentialStore(use_ecr=False), plain_http=True) as client:
        doc = client.get_manifest(out, entry["soci_index_digest"]).json()
        assert doc == pushed
        got = prefetch_in_registry(client, out, doc)
    # Decoded, their spans are those of the recorded files in their layers (the tars' offsets over the span
    # size): busybox in the shell layer (spans 0-1), the two read files in the app layer (span 3 only).
    indexed = {layer.digest for layer in world.image.layers}
    want = expected_artifacts(world.image, RECORDED, indexed)
    assert got == want
    shell, _, app = (layer.digest for layer in world.image.layers)
    assert {layer: json.loads(body)["prefetch_spans"] for layer, body in got.items()} == {
        shell: [{"start_span": 0, "end_span": 1}],
        app: [{"start_span": 3, "end_span": 3}],
    }
    assert {p["layer"]: p["digest"] for p in entry["prefetch"]} == {k: digest_of(v) for k, v in got.items()}
    assert entry["prefetch_not_found"] == []

    # Run again (a CI retry): the same files recorded, the same artifacts: already indexed, nothing pushed.
    again = _index(ref, work, soci_bin, *v2)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "already-indexed"
    assert len(soci_indexes_put(proxy.requests)) == 1


def test_from_oci_records_the_start_once_the_image_is_pushed(
    world: World, proxy: HttpProxy, work: Path, tmp_path: Path, soci_bin: str
) -> None:
    """--from-oci: the image goes from the layout to the registry, the recording pulls it from there, then the
    index with its prefetch artifacts is pushed (once)."""
    layout = write_layout(tmp_path / "layout", [(world.image, "1.0")])
    dest = Reference(proxy.host, "record/local", tag="1.0")
    proc = _index(dest, work, soci_bin, "--from-oci", str(layout))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["recorded"]["files"] == RECORDED
    assert report["recorded"]["image"] == str(dest.with_digest(world.image.digest))
    assert list(report["stages"]) == [
        "resolve", "authenticate", "containerd", "import", "push-image", "record", "index", "push"
    ]  # fmt: skip
    (pushed,) = soci_indexes_put(proxy.requests)
    shell, _, app = (layer.digest for layer in world.image.layers)
    prefetched = {
        x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for x in pushed["layers"] if x["mediaType"] == PREFETCH
    }
    assert prefetched == {shell, app}


# -- the consumer: soci-snapshotter-grpc fetches the recorded spans before it mounts the layer -----------------
def _log_time(entry: dict[str, Any]) -> float:
    """A snapshotter log entry's time (RFC 3339 with nanoseconds, UTC) in seconds since the epoch."""
    text = str(entry["time"]).rstrip("Z")
    whole, _, fraction = text.partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def _spans(range_header: str, size: int) -> set[int]:
    """The spans a Range header fetches whole (uncompressed layers: span i is the bytes [i * SPAN, (i + 1) * SPAN)
    of the layer, the last one shorter). The snapshotter fetches a span as exactly its range; a range that covers
    only part of a span fetches none (its 2-byte ``bytes=0-1`` probe of the blob, sent before any span, is not
    span 0)."""
    out: set[int] = set()
    for part in range_header.split("=", 1)[1].split(","):
        first, _, last = part.strip().partition("-")
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
        out.update(
            i
            for i in range(start // SPAN, end // SPAN + 1)
            if start <= i * SPAN and end >= min((i + 1) * SPAN, size) - 1
        )
    return out


def _wall_minus_monotonic() -> float:
    """time.time() - time.monotonic(), from the tightest of a few bracketed samples: read as two calls, a
    preemption between them (a loaded machine) shifts every proxy time moved to the wall clock by its length."""
    samples = []
    for _ in range(20):
        before, wall, after = time.monotonic(), time.time(), time.monotonic()
        samples.append((after - before, wall - (before + after) / 2))
    return min(samples)[1]


def test_the_snapshotter_fetches_the_recorded_spans_before_it_mounts_the_layer(
    world: World, proxy: HttpProxy, tmp_path: Path, soci_bin: str, containerd2_bin: str
) -> None:
    """The V2 image of ``index --record-prefetch``, started lazily with ``startup`` (the stock snapshotter with
    prefetch on, through containerd 2.x): the snapshotter's log says it loaded each prefetch artifact, then the
    layer resolved, then the mount; the registry saw the artifact's spans requested before the layer resolved,
    and never again (the container's reads were served from them)."""
    snapshotter = snapshotter_program()
    ref = _via(proxy, world.push("record/lazy"))
    indexed = _index(ref, tmp_path / "index", soci_bin, "--soci-version", "V2", "--output-tag", "soci")
    assert indexed.returncode == 0, indexed.stderr
    artifacts = {p["layer"]: p["digest"] for p in json.loads(indexed.stdout)["indexes"][0]["prefetch"]}
    shell, _, app = (layer.digest for layer in world.image.layers)
    assert set(artifacts) == {shell, app}
    spans = {shell: {0, 1}, app: {3}}  # as the first test decodes them from the registry

    mark = len(proxy.requests)
    wall_minus_monotonic = _wall_minus_monotonic()
    work = tmp_path / "startup"
    proc = run_cli(
        "startup", f"{ref.registry}/{ref.repository}:soci", "--containerd-bin", containerd2_bin,
        "--snapshotter-bin", snapshotter, "--work-dir", str(work), "--keep-work-dir", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    try:
        (variant,) = json.loads(proc.stdout)["variants"]
        assert variant["lazy_layers"] == 3
        assert {p["layer"]: (p["artifact"], p["span_ranges"]) for p in variant["prefetch"]} == {
            shell: (artifacts[shell], 1),
            app: (artifacts[app], 1),
        }
        (log,) = work.rglob("soci-snapshotter-grpc.log")
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    finally:
        assert [p.cmdline for p in processes(work)] == [], "processes of the run left"
        assert str(work) not in Path("/proc/self/mountinfo").read_text(), "mounts of the run left"
        shutil.rmtree(work)

    sizes = {layer.digest: layer.size for layer in world.image.layers}
    for layer, artifact in artifacts.items():
        mine = [e for e in entries if str(e.get("src", "")).endswith("/" + layer)]
        loading = next(e for e in mine if e["msg"] == f"Loading prefetch artifact {artifact}")
        resolved = next(e for e in mine if e["msg"] == "resolved layer")
        # the mount: the Mount call of that layer's mountpoint resolves it, or takes it resolved from the cache
        mounting = next(
            e
            for e in entries
            if "mountpoint" in e
            and (
                (e["msg"] == "resolved layer" and str(e.get("src", "")).endswith("/" + layer))
                or (e["msg"].startswith("hit layer cache") and e["msg"].rstrip('"').endswith("/" + layer))
            )
        )
        t_load, t_resolved, t_mount = _log_time(loading), _log_time(resolved), _log_time(mounting)
        assert t_load < t_resolved <= t_mount
        fetched = [
            (r.at + wall_minus_monotonic, _spans(r.header("range") or "", sizes[layer]))
            for r in proxy.requests[mark:]
            if r.method == "GET" and r.path.endswith(f"/blobs/{layer}") and r.header("range")
        ]
        # Resolve runs the prefetch, waiting for every span, before "resolved layer": so the artifact's spans
        # were all requested by then. (Not necessarily after "Loading prefetch artifact" by these clocks: the
        # proxy's times are its own; and the background fetcher stays silent for 30 s after a layer arrives, so
        # nothing else fetches a span before the layer is mounted.)
        prefetched = set().union(*(s for at, s in fetched if at < t_resolved))
        assert spans[layer] <= prefetched, (layer, fetched, t_load, t_resolved)
        # and the container's reads of the recorded files were served from them: not one fetched again
        assert not [s for at, s in fetched if at > t_resolved and s & spans[layer]], (layer, fetched)


# -- SIGTERM while the recorded start runs ---------------------------------------------------------------------------
def test_sigterm_during_the_recording_stops_everything_and_pushes_nothing(
    world: World, proxy: HttpProxy, work: Path, soci_bin: str
) -> None:
    ref = _via(proxy, world.push("record/sigterm"))
    argv = [sys.executable, "-m", "wrapper.cli.main", "index", str(ref), "--record-prefetch", "--soci-bin",
            soci_bin, *SIZES, "--work-dir", str(work), "--ready-log", "never", "--",
            "/bin/sh", "-c", "cat /app/read-1.txt; sleep 120"]  # fmt: skip

    def mid_recording(everything: dict[int, int]) -> None:  # the recorded start's container runs `sleep 120`
        assert list(work.iterdir()), "the run directory exists while it runs"
        assert not [r for r in proxy.requests if r.method not in ("GET", "HEAD")], "nothing pushed yet"

    _, stderr = _terminate_mid_run(argv, mid_recording)  # exit 130, and no process of the run left
    assert "interrupted" in stderr
    writes = [(r.method, r.path) for r in proxy.requests if r.method not in ("GET", "HEAD")]
    assert writes == [], "nothing may be pushed"
    # (the work fixture checks that no process, mount or file of the run is left)


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ready-log", "^up$"], "--ready-log is for the recorded start: it goes with --record-prefetch"),
        (["--timeout", "5"], "--timeout is for the recorded start"),
        (["--", "/bin/true"], "-- CMD is for the recorded start"),
        (["127.0.0.1:9/other:1", "--record-prefetch"], "--record-prefetch records the start of one image"),
        (["--record-prefetch", "--platform", "linux/arm64"], "does not include it"),
        (["--record-prefetch", "--ready-log", "("], "is not a valid regular expression"),
        (["--record-prefetch", "--ready-port", "0"], "is not a TCP port"),
        (["--record-prefetch", "--env", "NOVALUE"], "is not KEY=VALUE"),
        (["--record-prefetch", "--"], "nothing after --"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    # a registry nobody listens on: any network work would fail otherwise (exit 5), and take longer
    proc = run_cli("index", "127.0.0.1:9/app:1", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soci-wrapper: error: ") and message in lines[0], lines
    assert "Traceback" not in proc.stderr

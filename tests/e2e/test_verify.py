"""``soci-wrapper verify`` end to end: real registries (docker-registry, zot), containerd, soci and the SOCI
snapshotter (soci-snapshotter-grpc, FUSE).

Valid indexes are made by the CLI itself (``index``, V1 and V2, one and two platforms); broken ones are made
from those by pushing hand-made manifests with the project's RegistryClient, into repositories of their own.
The layers hold several files each, so that the content and consumer levels read real files through zTOCs.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer, start_registry
from tests.fixtures.snapshotter import snapshotter_program
from tests.helpers import ROOT, processes, run_cli
from tests.imagefactory import (
    AMD64,
    ARM64,
    FileSpec,
    Image,
    ImageIndex,
    LayerSpec,
    build_image,
    build_index,
    push_image,
)
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.core.models import (
    OCI_INDEX,
    OCI_MANIFEST,
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    SOCI_SPAN_SIZE_ANNOTATION,
    Descriptor,
)
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.pullmodes import V1_NOTE
from wrapper.verify.content_checks import ZtocFile, choose_sample
from wrapper.verify.ztocfmt import ZtocFormatError, read_ztoc

pytestmark = pytest.mark.soci

# Layer 0 and 2 are indexed (over --min-layer-size 1MiB), layer 1 is not. Sizes differ, so each zTOC
# describes a layer of its own size.
FILES_A = tuple(
    FileSpec(f"app/f{i}.bin", size) for i, size in enumerate((1000, 300_000, 900_000, 5, 700_000, 200_000))
)
FILES_B = (FileSpec("usr/lib/big.so", 2_200_000), FileSpec("usr/lib/x", 10), FileSpec("etc/conf", 77))
LAYERS = (
    LayerSpec(0, files=FILES_A, seed=4101),
    LayerSpec(100 * 1024, seed=4102),
    LayerSpec(0, files=FILES_B, seed=4103),
)
INDEX_ARGS = ("--min-layer-size", "1MiB", "--json")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class World:
    """A registry with a single-platform and a two-platform image, each indexed V1 and V2 by the CLI."""

    registry: RegistryServer
    client: RegistryClient
    soci: str
    single: Image
    single_ref: Reference  # V1-indexed, by digest
    single_v2: Reference  # the SOCI-enabled image (tag)
    multi: ImageIndex
    multi_ref: Reference
    multi_v2: Reference
    index_with_verify: dict[str, Any]  # `index --verify --json` of the single-platform image

    def verify(
        self, ref: Reference | str, *args: str
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        proc = run_cli("verify", str(ref), "--soci-bin", self.soci, "--json", *args)
        assert proc.stdout, proc.stderr
        return proc, json.loads(proc.stdout)

    def blob(self, ref: Reference, digest: str) -> bytes:
        with self.client.open_blob(ref, digest) as stream:
            return b"".join(stream)

    def push_bytes(
        self, ref: Reference, data: bytes, media_type: str = "application/octet-stream"
    ) -> Descriptor:
        desc = Descriptor(media_type, _digest(data), len(data))
        self.client.push_blob(ref, desc, lambda: [data])
        return desc

    def v1_index_of_single(self) -> dict[str, Any]:
        found = self.client.get_referrers(self.single_ref, self.single.digest, artifact_type=SOCI_INDEX_V1)
        return self.client.get_manifest(self.single_ref, found[0].digest).json()

    def broken_v1(
        self, repo: str, image: Image, mutate: Callable[[dict[str, Any], Reference], None]
    ) -> tuple[Reference, dict[str, Any]]:
        """``image`` pushed to ``repo``, and the single-platform image's real SOCI index v1 (its config and
        zTOC blobs copied over) changed by ``mutate`` and listed under ``image``'s referrers tag."""
        dst = Reference(self.registry.host, repo, tag="v1")
        push_image(self.client, dst, image)
        doc = self.v1_index_of_single()
        for entry in (doc["config"], *doc["layers"]):
            self.push_bytes(dst, self.blob(self.single_ref, entry["digest"]), entry["mediaType"])
        mutate(doc, dst)
        body = _json(doc)
        self.client.put_manifest(dst, _digest(body), body, OCI_MANIFEST)
        entry = {
            "mediaType": OCI_MANIFEST,
            "digest": _digest(body),
            "size": len(body),
            "artifactType": SOCI_INDEX_V1,
        }
        listing = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
        self.client.put_manifest(dst, "sha256-" + image.digest.split(":", 1)[1], listing, OCI_INDEX)
        return dst.with_digest(image.digest), doc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, soci_bin: str) -> Iterator[World]:
    server = start_registry(tmp_path_factory.mktemp("verify-registry"))
    images = tmp_path_factory.mktemp("verify-images")
    try:
        with RegistryClient(CredentialStore(use_ecr=False)) as client:
            single = build_image(images, LAYERS, platform=AMD64)
            ref = Reference(server.host, "verify/single", tag="v1")
            single_ref = ref.with_digest(push_image(client, ref, single))
            indexed = run_cli("index", str(single_ref), "--soci-bin", soci_bin, *INDEX_ARGS, "--verify")
            assert indexed.returncode == 0, indexed.stderr
            v2 = run_cli("index", str(single_ref), "--soci-bin", soci_bin, *INDEX_ARGS, "--soci-version", "V2",
                         "--output-tag", "single-soci")  # fmt: skip
            assert v2.returncode == 0, v2.stderr

            multi = build_index(images, LAYERS, platforms=(AMD64, ARM64))
            ref = Reference(server.host, "verify/multi", tag="v1")
            multi_ref = ref.with_digest(push_image(client, ref, multi))
            for extra in ((), ("--soci-version", "V2", "--output-tag", "multi-soci")):
                proc = run_cli(
                    "index", str(multi_ref), "--all-platforms", "--soci-bin", soci_bin, *INDEX_ARGS, *extra
                )
                assert proc.returncode == 0, proc.stderr
            yield World(
                registry=server,
                client=client,
                soci=soci_bin,
                single=single,
                single_ref=single_ref,
                single_v2=Reference(server.host, "verify/single", tag="single-soci"),
                multi=multi,
                multi_ref=multi_ref,
                multi_v2=Reference(server.host, "verify/multi", tag="multi-soci"),
                index_with_verify=json.loads(indexed.stdout),
            )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def snapshotter() -> str:
    """soci-snapshotter-grpc, with root and FUSE (tests/fixtures/snapshotter.py)."""
    return snapshotter_program()


def assert_valid_at_every_level(report: dict[str, Any], platforms: int) -> None:
    """Every platform: 2 of its 3 layers indexed, each checked at every level, mounted lazily by the
    snapshotter (one FUSE mount each), and the files read through soci and through FUSE match the layer.
    What a stock snapshotter does is said per platform (assert_default_pull_modes)."""
    assert report["status"] == "valid", report["problems"]
    assert report["exit_code"] == 0 and report["problems"] == []
    assert report["levels"] == {"registry": "run", "content": "run", "consumer": "run"}
    assert len(report["platforms"]) == platforms
    assert report["warnings"] == [w for p in report["platforms"] for w in p["warnings"]]
    for platform in report["platforms"]:
        assert platform["ok"] and platform["soci_index_digest"]
        assert_default_pull_modes(platform)
        assert platform["layers_covered"] == 2 and platform["layers_not_covered"] == 1
        assert platform["fuse_mounts"] == 2  # one fuse.rawBridge mount per indexed layer
        for layer in platform["layers"]:
            if not layer["covered"]:
                assert layer["lazy"] is False and layer["files_compared"] == 0
                continue
            assert {c["level"] for c in layer["checks"]} == {"registry", "content", "consumer"}
            assert all(c["ok"] for c in layer["checks"])
            assert layer["lazy"] is True
            # Layer A has 6 files (all sampled), layer B 3: read with `soci ztoc get-file`, and through FUSE.
            assert layer["files_compared"] in (6, 3)
            assert layer["files_read_lazily"] == layer["files_compared"]
            assert layer["bytes_compared"] > 2_000_000


def assert_default_pull_modes(platform: dict[str, Any]) -> None:
    """A V2 index is verified with the snapshotter's default pull modes, and no more is said. A V1 index is
    pulled with them first: the snapshotter hands the image back to the runtime (nothing lazy), which the
    report says as a warning with the config line that changes it (never a failure); then it is verified by a
    snapshotter with that line."""
    checks = {c["check"]: c for c in platform["checks"]}
    lazy_pull = checks["lazy-pull"]
    assert lazy_pull["ok"] and not lazy_pull["warning"]
    if platform["soci_version"] == "V2":
        assert platform["lazy_by_default"] is True and platform["warnings"] == []
        assert "default-pull-modes" not in checks
        assert "with its default pull modes" in lazy_pull["detail"]
        return
    assert platform["lazy_by_default"] is False
    default = checks["default-pull-modes"]
    assert default["level"] == "consumer" and default["ok"] is True and default["warning"] is True
    detail = default["detail"]
    assert detail.startswith(
        "a stock soci-snapshotter-grpc (v0.10.0 and later; default pull modes: SOCI index manifest v2 only) does "
        "not load this V1 index lazily: it handed layer "
    )
    # What the snapshotter logged, and that nothing was mounted; the line that makes it lazy; the other way.
    assert '(its log: "soci v1 is disabled"), which pulls and unpacks the whole image' in detail
    assert "(0 of 2 indexed layers mounted lazily)" in detail
    assert "[pull_modes.soci_v1] enable = true in its config.toml" in detail
    assert "--soci-version V2" in detail
    assert platform["warnings"] == [f"{platform['platform']}: {detail}"]
    assert "with [pull_modes.soci_v1] enable = true" in lazy_pull["detail"]
    assert "0 of" not in lazy_pull["detail"] and "2 of 2 indexed layers mounted lazily" in lazy_pull["detail"]


def exited(proc: subprocess.CompletedProcess[str], report: dict[str, Any], code: int) -> None:
    """``proc`` ended with ``code``; if not, the message has the report's problems and soci-wrapper's stderr."""
    assert proc.returncode == code, (
        f"exit {proc.returncode}, not {code}: {report.get('problems') or report.get('error')}\n{proc.stderr[-3000:]}"
    )


def problems(report: dict[str, Any]) -> str:
    return "\n".join(report["problems"])


# -- valid indexes --------------------------------------------------------------------------------------------
def test_v1_single_platform_passes_every_level_through_containerd2(
    world: World,
    snapshotter: str,
    containerd2_bin: str,
) -> None:
    """containerd 2.x forwards the namespace to its proxy snapshotter: the pull goes through containerd."""
    proc, report = world.verify(
        world.single_ref, "--snapshotter-bin", snapshotter, "--containerd-bin", containerd2_bin
    )
    exited(proc, report, 0)
    assert_valid_at_every_level(report, 1)
    platform = report["platforms"][0]
    assert platform["soci_version"] == "V1"
    assert platform["discovered_via"].startswith("referrers tag sha256-")  # docker-registry: no referrers API
    lazy_pull = next(c for c in platform["checks"] if c["check"] == "lazy-pull")
    # V1 is verified by the second snapshotter, the one with v1 enabled.
    assert "containerd 2." in lazy_pull["detail"] and "proxy snapshotter 'soci-v1'" in lazy_pull["detail"]
    # The human form: the platform's title, the warning, and a verdict that is still valid (exit 0).
    human = run_cli("verify", str(world.single_ref), "--soci-bin", world.soci, "--snapshotter-bin", snapshotter,
                    "--containerd-bin", containerd2_bin)  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "not lazy with the snapshotter's default pull modes" in human.stdout
    assert "warnings:" in human.stdout and "[pull_modes.soci_v1] enable = true" in human.stdout
    assert "every SOCI index is valid (registry, content, consumer checks, 1 warning)" in human.stdout


def test_v2_single_platform_passes_every_level_with_containerd16(
    world: World,
    snapshotter: str,
) -> None:
    """Debian's containerd 1.6 does not pass namespaces on to proxy snapshotters: the same requests go to the
    snapshotter's own Snapshots API, and the layers are still served lazily."""
    proc, report = world.verify(world.single_v2, "--snapshotter-bin", snapshotter)
    exited(proc, report, 0)
    assert_valid_at_every_level(report, 1)
    platform = report["platforms"][0]
    assert platform["soci_version"] == "V2" and platform["discovered_via"] == "manifest annotation"
    lazy_pull = next(c for c in platform["checks"] if c["check"] == "lazy-pull")
    assert "snapshotter's own Snapshots API" in lazy_pull["detail"]


def test_v1_two_platforms_pass_every_level(
    world: World,
    snapshotter: str,
    containerd2_bin: str,
) -> None:
    proc, report = world.verify(
        world.multi_ref,
        "--all-platforms",
        "--snapshotter-bin",
        snapshotter,
        "--containerd-bin",
        containerd2_bin,
    )
    exited(proc, report, 0)
    assert_valid_at_every_level(report, 2)
    assert [p["platform"] for p in report["platforms"]] == ["linux/amd64", "linux/arm64/v8"]
    assert len({p["soci_index_digest"] for p in report["platforms"]}) == 2


def test_v2_two_platforms_pass_every_level_and_the_table(world: World, snapshotter: str) -> None:
    proc, report = world.verify(world.multi_v2, "--all-platforms", "--snapshotter-bin", snapshotter)
    exited(proc, report, 0)
    assert_valid_at_every_level(report, 2)
    assert {p["soci_version"] for p in report["platforms"]} == {"V2"}
    # The human form: one table per platform, a row per layer and a column per level.
    human = run_cli("verify", str(world.multi_v2), "--platform", "linux/arm64", "--level", "registry",
                    "--soci-bin", world.soci)  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "linux/arm64/v8: SOCI index V2" in human.stdout and "linux/amd64" not in human.stdout
    assert "every SOCI index is valid (registry checks)" in human.stdout


def test_index_verify_checks_what_was_pushed(world: World) -> None:
    report = world.index_with_verify
    assert report["status"] == "indexed"
    checked = report["verify"]
    assert checked["status"] == "valid" and checked["exit_code"] == 0
    assert checked["platforms"][0]["soci_index_digest"] == report["indexes"][0]["soci_index_digest"]
    assert checked["levels"]["registry"] == checked["levels"]["content"] == "run"
    assert report["warnings"] == [V1_NOTE]  # index's note, once; verify's own warning in its report
    (warning,) = checked["warnings"]
    assert warning.startswith("linux/amd64: ") and "[pull_modes.soci_v1] enable = true" in warning


def test_v1_discovery_through_the_referrers_api_on_zot(
    zot_registry: RegistryServer,
    world: World,
    snapshotter: str,
    tmp_path: Path,
) -> None:
    ref = Reference(zot_registry.host, "verify/zot", tag="v1")
    ref = ref.with_digest(push_image(world.client, ref, world.single))
    indexed = run_cli("index", str(ref), "--soci-bin", world.soci, *INDEX_ARGS)
    assert indexed.returncode == 0, indexed.stderr
    proc, report = world.verify(ref, "--snapshotter-bin", snapshotter)
    exited(proc, report, 0)
    assert_valid_at_every_level(report, 1)
    assert report["platforms"][0]["discovered_via"] == "referrers API"  # zot has it, and no referrers tag


def test_consumer_level_not_run_says_why(
    world: World, containerd: ManagedContainerd, containerd_namespace: str
) -> None:
    """Where the snapshotter cannot run (here: not found; or attached to someone else's containerd), the
    consumer level is reported as not run, with the reason, and the levels above still decide."""
    proc, report = world.verify(world.single_ref, "--snapshotter-bin", "/nonexistent/soci-snapshotter-grpc")
    exited(proc, report, 0)
    assert report["status"] == "valid" and report["levels"]["content"] == "run"
    assert report["levels"]["consumer"].startswith(
        "not run: soci-snapshotter-grpc not found at /nonexistent/soci-snapshotter-grpc"
    )
    assert report["platforms"][0]["fuse_mounts"] is None
    # Not seen, so said as the snapshotter's documented default, and said to be unchecked.
    assert report["platforms"][0]["lazy_by_default"] is None
    assert report["warnings"] == [
        f"linux/amd64: {V1_NOTE} (not seen here: the consumer level did not pull this platform)"
    ]

    proc, report = world.verify(
        world.single_ref, "--containerd-address", containerd.address, "--namespace", containerd_namespace
    )
    exited(proc, report, 0)
    assert report["levels"]["content"] == "run"  # in the attached containerd, in a namespace of its own
    assert report["levels"]["consumer"] == (
        "not run: needs soci-wrapper's own containerd (the snapshotter is one of its proxy plugins), "
        "not --containerd-address"
    )


# -- what fails, and how it is named ---------------------------------------------------------------------------
def test_no_index(world: World, tmp_path: Path) -> None:
    image = build_image(tmp_path, [LayerSpec(0, files=FILES_B, seed=4201)])
    ref = Reference(world.registry.host, "verify/none", tag="v1")
    ref = ref.with_digest(push_image(world.client, ref, image))
    proc, report = world.verify(ref)
    exited(proc, report, 10)
    assert report["status"] == "no-index" and report["exit_code"] == 10
    assert report["problems"] == [f"linux/amd64: no SOCI index found for manifest {image.digest}"]
    assert report["levels"]["content"] == "not run: no readable zTOC (see the registry level)"
    assert "soci-wrapper: error: no SOCI index: linux/amd64" in proc.stderr


def test_v1_index_whose_subject_is_another_manifest(world: World, tmp_path: Path) -> None:
    other = build_image(tmp_path, [LayerSpec(0, files=FILES_B, seed=4301)])
    ref, doc = world.broken_v1("verify/subject", other, lambda doc, dst: None)  # the single image's index
    proc, report = world.verify(ref)
    exited(proc, report, 11)
    assert report["status"] == "invalid"
    text = problems(report)
    assert f"linux/amd64: SOCI index {_digest(_json(doc))} has subject {world.single.digest}, " in text
    assert f"not this platform's manifest {other.digest}" in text
    layer = doc["layers"][0]["annotations"][SOCI_LAYER_DIGEST_ANNOTATION]
    assert f"is annotated with layer {layer}, which is not a layer of this manifest" in text


def test_ztoc_of_another_layer(world: World) -> None:
    a, b = world.single.layers[0], world.single.layers[2]

    def swap(doc: dict[str, Any], dst: Reference) -> None:
        first, second = doc["layers"]
        note = SOCI_LAYER_DIGEST_ANNOTATION
        first["annotations"][note], second["annotations"][note] = (
            second["annotations"][note],
            first["annotations"][note],
        )

    ref, doc = world.broken_v1("verify/swapped", world.single, swap)
    ztoc_for_b = next(
        x["digest"] for x in doc["layers"] if x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] == a.digest
    )
    proc, report = world.verify(ref)
    exited(proc, report, 11)
    text = problems(report)
    # The registry level reads the zTOC's own record of its layer's size...
    assert (
        f"linux/amd64: layer {a.digest}: zTOC {ztoc_for_b} describes a layer of {b.size} bytes, "
        f"this layer has {a.size}: it is the zTOC of another layer"
    ) in text
    # ...and the content level shows what that does: soci lists (and reads) files the layer does not have.
    assert f"linux/amd64: layer {a.digest}: zTOC {ztoc_for_b} lists 3 files the layer does not have" in text
    # The consumer level does not run on an invalid index.
    assert report["platforms"][0]["fuse_mounts"] is None
    assert report["levels"]["consumer"] == "not run: no index passed the registry and content levels"


def test_truncated_ztoc_blob(world: World) -> None:
    a = world.single.layers[0]
    truncated: dict[str, str] = {}

    def truncate(doc: dict[str, Any], dst: Reference) -> None:
        entry = next(x for x in doc["layers"] if x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] == a.digest)
        data = world.blob(dst, entry["digest"])
        desc = world.push_bytes(dst, data[: len(data) // 2])
        entry["digest"], entry["size"] = desc.digest, desc.size
        truncated["digest"] = desc.digest

    ref, _ = world.broken_v1("verify/truncated", world.single, truncate)
    proc, report = world.verify(ref)
    exited(proc, report, 11)
    text = problems(report)
    assert f"linux/amd64: layer {a.digest}: zTOC {truncated['digest']} cannot be decoded: " in text
    assert "truncated?" in text
    layer = next(x for x in report["platforms"][0]["layers"] if x["digest"] == a.digest)
    assert [c["check"] for c in layer["checks"] if not c["ok"]] == ["ztoc-format"]


def test_span_size_annotation_that_disagrees_with_the_ztoc(world: World) -> None:
    a = world.single.layers[0]

    def lie(doc: dict[str, Any], dst: Reference) -> None:
        entry = next(x for x in doc["layers"] if x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] == a.digest)
        entry["annotations"][SOCI_SPAN_SIZE_ANNOTATION] = str(1 << 20)

    ref, doc = world.broken_v1("verify/span", world.single, lie)
    ztoc = next(
        x["digest"] for x in doc["layers"] if x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] == a.digest
    )
    proc, report = world.verify(ref)
    exited(proc, report, 11)
    text = problems(report)
    # Both the project's own reading of the zTOC and soci's (`soci ztoc info`) say so.
    assert (
        f"linux/amd64: layer {a.digest}: zTOC {ztoc}: its span-size annotation says 1048576, the zTOC was built "
        "with span size 4194304"
    ) in text
    assert (
        f"linux/amd64: layer {a.digest}: zTOC {ztoc}: its span-size annotation says 1048576, soci reads span size 4194304"
        in text
    )
    layer = next(x for x in report["platforms"][0]["layers"] if x["digest"] == a.digest)
    assert layer["files_compared"] == 6  # the files still read right through it


def test_v2_annotation_naming_a_missing_index(world: World) -> None:
    ref = world.single_v2
    top = world.client.get_manifest(ref).json()
    entry = next(m for m in top["manifests"] if m.get("artifactType") != SOCI_INDEX_V2)
    manifest = world.client.get_manifest(ref, entry["digest"]).json()
    missing = _digest(b"no such SOCI index")
    manifest["annotations"][SOCI_INDEX_DIGEST_ANNOTATION] = missing
    body = _json(manifest)
    world.client.put_manifest(ref, _digest(body), body, OCI_MANIFEST)
    new_entry = {
        **entry,
        "digest": _digest(body),
        "size": len(body),
        "annotations": {SOCI_INDEX_DIGEST_ANNOTATION: missing},
    }
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [new_entry]})
    world.client.put_manifest(ref, "missing-index", index, OCI_INDEX)

    proc, report = world.verify(Reference(ref.registry, ref.repository, tag="missing-index"))
    exited(proc, report, 11)
    text = problems(report)
    assert (
        f"linux/amd64: the manifest names SOCI index {missing}, which the image index does not list" in text
    )
    assert f"linux/amd64: SOCI index {missing} is not in the registry" in text


# -- cleanup ----------------------------------------------------------------------------------------------------
def _processes_under(path: Path) -> list[str]:
    return [f"{p.pid}: {p.cmdline}" for p in processes(path) if "wrapper.cli.main" not in p.cmdline]


def _fuse_mounts_of(pid: str) -> int:
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text().count("fuse.rawBridge")
    except OSError:
        return 0


def test_sigterm_while_layers_are_mounted_stops_and_unmounts_everything(
    world: World,
    snapshotter: str,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    argv = [sys.executable, "-m", "wrapper.cli.main", "verify", str(world.multi_v2), "--all-platforms", "--json",
            "--soci-bin", world.soci, "--snapshotter-bin", snapshotter, "--work-dir", str(work)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    mounted = False
    while time.monotonic() < deadline and proc.poll() is None and not mounted:
        for line in _processes_under(work):
            pid = line.split(":", 1)[0]
            if "soci-snapshotter-grpc" in line and _fuse_mounts_of(pid) > 0:
                mounted = True
                break
        else:
            time.sleep(0.005)
    assert mounted, "the snapshotter never mounted a layer"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out) == {"error": "interrupted", "exit_code": 130}
    assert _processes_under(work) == []  # containerd, the snapshotter, soci: all gone
    assert str(work) not in Path("/proc/self/mountinfo").read_text()
    assert list(work.iterdir()) == []  # the run's directory is removed


# -- pieces that need no daemon ------------------------------------------------------------------------------------
def test_sample_takes_the_first_the_last_and_the_largest_files() -> None:
    files = [
        ZtocFile(f"f{i}", offset=i * 1000, size=size) for i, size in enumerate([5, 0, 70, 9, 800, 1, 2, 60])
    ]
    chosen = [f.name for f in choose_sample(files, 6)]
    assert chosen == ["f0", "f2", "f3", "f4", "f6", "f7"]  # first 2 with content, last 2, then the largest
    assert choose_sample(files, 0) == []


def test_ztoc_reader_refuses_truncated_blobs(world: World) -> None:
    doc = world.v1_index_of_single()
    data = world.blob(world.single_ref, doc["layers"][0]["digest"])
    facts = read_ztoc(data)
    assert facts.compressed_size in {layer.size for layer in world.single.layers}
    assert facts.span_size == 4 << 20 and facts.algorithm == "gzip" and facts.regular_files in (6, 3)
    for cut in (8, 64, len(data) // 2):
        with pytest.raises(ZtocFormatError):
            read_ztoc(data[:cut])

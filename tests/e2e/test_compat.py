"""The compatibility matrix, through the command line with the real soci: containerd 1.6 (the default) and 2.x
(``--containerd-bin``) as the managed daemon; registries with the OCI referrers API (zot) and without it
(Debian's docker-registry: the ``sha256-<hex>`` tag); and a registry that refuses SOCI index manifests v1 as
Docker Hub does (the proxy's ``refuse_soci_v1``), where V2 is the way.

Images are small (a 2 MiB layer indexed, a 100 KiB one skipped, with ``--min-layer-size 1MiB``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, our_containerd_processes, push, run_cli, seed_for
from tests.imagefactory import Image, LayerSpec, build_image
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.core.errors import ExitCode
from wrapper.core.models import (
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    Descriptor,
)
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci

# containerd's log lines that say something went wrong (logrus' levels; a Go panic or fatal error).
_LOG_PROBLEM = re.compile(r"level=(warning|warn|error|fatal|panic)\b|^panic:|^fatal error:", re.MULTILINE)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


@pytest.fixture(params=["containerd1", "containerd2"])
def containerd_choice(request: pytest.FixtureRequest) -> tuple[list[str], str]:
    """The soci-wrapper flags that pick each containerd release, and the version its log must show: the
    default (Debian's 1.6: no flag), then 2.x with ``--containerd-bin``."""
    if request.param == "containerd2":
        binary = str(request.getfixturevalue("containerd2_bin"))
        return ["--containerd-bin", binary], "2."
    return [], "1.6."


@pytest.fixture(params=["distribution", "zot"])
def any_registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Debian's docker-registry (no referrers API), then zot (referrers API)."""
    fixture = "registry" if request.param == "distribution" else "zot_registry"
    server = request.getfixturevalue(fixture)
    assert isinstance(server, RegistryServer)
    return server


def small_image(tmp_path: Path, request: pytest.FixtureRequest) -> Image:
    seed = seed_for(request)
    return build_image(
        tmp_path / "img", [LayerSpec(2 * MIB, seed=seed), LayerSpec(100 * 1024, seed=seed + 1)]
    )


def index_cli(ref: Reference, soci_bin: str, work: Path, *extra: str) -> dict[str, Any]:
    """``soci-wrapper index REF --json`` that must succeed; its report."""
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work), "--json",
        *extra, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert our_containerd_processes(work) == []
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def kept_run_dir(work: Path) -> Path:
    """The one run directory a ``--keep-work-dir`` run left in ``work``."""
    kept = list(work.iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("soci-wrapper-"), kept
    return kept[0]


def check_daemon_log(run_dir: Path, version: str) -> None:
    """The managed daemon's log: the release asked for, and no warning or error line."""
    log_text = (run_dir / "containerd" / "containerd.log").read_text(errors="replace")
    started = re.search(r'msg="starting containerd".*\bversion="?v?([^"\s]+)', log_text)
    assert started is not None, log_text[-2000:]
    assert started.group(1).startswith(version), started.group(0)
    assert [line for line in log_text.splitlines() if _LOG_PROBLEM.search(line)] == []


def check_v1_index(client: RegistryClient, ref: Reference, image: Image, report: dict[str, Any]) -> str:
    """The registry holds one SOCI index v1 for the image, the report's, with a zTOC for the big layer only."""
    assert report["status"] == "indexed", report
    found = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    digest = report["indexes"][0]["soci_index_digest"]
    assert [d.digest for d in found] == [digest]
    doc = client.get_manifest(ref, digest).json()
    assert doc["subject"]["digest"] == image.digest
    assert [x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for x in doc["layers"]] == [image.layers[0].digest]
    for blob in [doc["config"], *doc["layers"]]:
        assert client.blob_exists(ref, blob["digest"])
    return str(digest)


def check_v2_image(
    client: RegistryClient, ref: Reference, image: Image, tag: str, report: dict[str, Any]
) -> None:
    """``tag`` is the SOCI-enabled image: the image's config and layers, annotated with the SOCI index (v2) the
    image index also holds, whose zTOC covers the big layer."""
    assert report["status"] == "indexed" and report["pushed_tag"] == tag, report
    out = client.get_manifest(ref, tag)
    assert out.descriptor.digest == report["output_digest"]
    entries = [Descriptor.from_oci(m) for m in out.json()["manifests"]]
    soci_entries = [e for e in entries if e.artifact_type == SOCI_INDEX_V2]
    images = [e for e in entries if e.artifact_type != SOCI_INDEX_V2]
    assert len(soci_entries) == 1 and len(images) == 1, entries
    assert soci_entries[0].digest == report["indexes"][0]["soci_index_digest"]
    rewritten = client.get_manifest(ref, images[0].digest).json()
    original = json.loads(image.manifest.read_bytes())
    assert rewritten["config"]["digest"] == original["config"]["digest"]
    assert [x["digest"] for x in rewritten["layers"]] == [x["digest"] for x in original["layers"]]
    assert rewritten["annotations"][SOCI_INDEX_DIGEST_ANNOTATION] == soci_entries[0].digest
    soci_doc = client.get_manifest(ref, soci_entries[0].digest).json()
    assert [x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for x in soci_doc["layers"]] == [
        image.layers[0].digest
    ]
    for blob in [soci_doc["config"], *soci_doc["layers"]]:
        assert client.blob_exists(ref, blob["digest"])


# -- containerd 1.6 and 2.x ------------------------------------------------------------------------------
def test_pull_full_into_each_containerd(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    containerd_choice: tuple[list[str], str],
    request: pytest.FixtureRequest,
) -> None:
    """``pull --full`` into the managed daemon of each release stores every blob, byte for byte, and an image
    record that a daemon of the same release, started again on the kept directory, reads back."""
    flags, version = containerd_choice
    image = small_image(tmp_path, request)
    ref = push(registry, client, "compat/pull", image)
    work = tmp_path / "work"
    proc = run_cli("pull", str(ref), "--full", "--json", "--keep-work-dir", "--work-dir", str(work), *flags)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert our_containerd_processes(work) == []
    wanted = {blob.digest: blob for blob in (image.manifest, image.config, *image.layers)}
    assert {b["digest"]: b["action"] for b in result["blobs"]} == dict.fromkeys(wanted, "fetched")

    run_dir = kept_run_dir(work)
    check_daemon_log(run_dir, version)
    blobs = run_dir / "containerd" / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256"
    for digest, source in wanted.items():
        stored = (blobs / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(stored).hexdigest() == digest
        assert stored == source.read_bytes()

    # The same release, started again on what the run kept, has the image record and its content.
    binary = flags[1] if flags else "containerd"
    with (
        ManagedContainerd(run_dir / "containerd", binary=binary) as daemon,
        ContainerdClient(daemon.address, "soci-wrapper") as cd,
    ):
        record = cd.images.get(str(ref))
        assert record.target.digest == image.digest
        assert set(wanted) <= set(cd.content.list_digests())
        labels = cd.content.info(image.digest).labels
        assert labels["containerd.io/gc.ref.content.config"] == image.config.digest
        assert {v for k, v in labels.items() if ".l." in k} == {x.digest for x in image.layers}


@pytest.mark.parametrize("soci_version", ["V1", "V2"])
def test_index_with_each_containerd(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    containerd_choice: tuple[list[str], str],
    soci_version: str,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    flags, version = containerd_choice
    image = small_image(tmp_path, request)
    ref = push(registry, client, f"compat/index-{soci_version.lower()}", image)
    work = tmp_path / "work"
    extra = [*flags, "--keep-work-dir", "--soci-version", soci_version]
    if soci_version == "V2":
        extra += ["--output-tag", "app-soci"]
    report = index_cli(ref, soci_bin, work, *extra)
    if soci_version == "V1":
        check_v1_index(client, ref, image, report)
    else:
        check_v2_image(client, ref, image, "app-soci", report)
    check_daemon_log(kept_run_dir(work), version)


# -- registries with and without the referrers API --------------------------------------------------------
def referrers_requests(requests: list[RecordedRequest], subject: str) -> list[RecordedRequest]:
    return [r for r in requests if r.method == "GET" and f"/referrers/{subject}" in r.path]


def tag_requests(requests: list[RecordedRequest], subject: str, method: str) -> list[RecordedRequest]:
    tag = "sha256-" + subject.removeprefix("sha256:")
    return [r for r in requests if r.method == method and r.path.split("?")[0].endswith(f"/manifests/{tag}")]


def test_v1_discovery_on_each_registry(
    tmp_path: Path,
    any_registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    """V1, then the rerun that finds the index (already-indexed): zot through its referrers API, with no
    ``sha256-<hex>`` tag made or read; docker-registry (no referrers API: 404) through that tag."""
    image = small_image(tmp_path, request)
    ref = push(any_registry, client, "compat/discovery", image)
    referrers_api = any_registry.kind == "zot"
    with HttpProxy(any_registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        report = index_cli(via, soci_bin, tmp_path / "work")
        first = proxy.requests
        proxy.reset()
        again = index_cli(via, soci_bin, tmp_path / "work")
        rerun = proxy.requests
    digest = check_v1_index(client, ref, image, report)
    assert again["status"] == "already-indexed"
    assert [i["soci_index_digest"] for i in again["indexes"]] == [digest]
    assert "pull" not in again["stages"]

    lookups = referrers_requests(rerun, image.digest)
    assert lookups, [r.path for r in rerun]
    tags = client.list_tags(ref)
    fallback_tag = "sha256-" + image.digest.removeprefix("sha256:")
    if referrers_api:
        assert {r.status for r in lookups} == {200}
        for requests in (first, rerun):  # neither soci push nor soci-wrapper went near the tag
            assert tag_requests(requests, image.digest, "GET") == []
            assert tag_requests(requests, image.digest, "PUT") == []
        assert tags == ["v1"]
    else:
        assert {r.status for r in lookups} == {404}
        assert [r.status for r in tag_requests(rerun, image.digest, "GET")] == [200]
        assert [r.status for r in tag_requests(first, image.digest, "PUT")] == [201]  # soci push's fallback
        assert sorted(tags) == sorted(["v1", fallback_tag])
        listed = client.get_manifest(ref, fallback_tag).json()["manifests"]
        assert [m["digest"] for m in listed] == [digest]


def test_v2_on_a_registry_with_the_referrers_api(
    tmp_path: Path,
    zot_registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    image = small_image(tmp_path, request)
    ref = push(zot_registry, client, "compat/v2", image)
    args = ("--soci-version", "V2", "--output-tag", "app-soci")
    report = index_cli(ref, soci_bin, tmp_path / "work", *args)
    check_v2_image(client, ref, image, "app-soci", report)
    again = index_cli(ref, soci_bin, tmp_path / "work", *args)
    assert again["status"] == "already-indexed" and "pull" not in again["stages"]
    assert sorted(client.list_tags(ref)) == ["app-soci", "v1"]


# -- a registry that refuses SOCI index manifests v1 (Docker Hub) ----------------------------------------
def dangling_references(server: RegistryServer, client: RegistryClient, ref: Reference) -> list[str]:
    """Every manifest docker-registry holds in ``ref``'s repository (read from its storage, tagged or not) whose
    config, layers, subject or child manifests the repository does not have: what a half-finished push leaves."""
    revisions = (
        server.root / "storage" / "docker" / "registry" / "v2" / "repositories" / ref.repository
        / "_manifests" / "revisions" / "sha256"
    )  # fmt: skip
    missing: list[str] = []
    for entry in sorted(revisions.iterdir()):
        digest = f"sha256:{entry.name}"
        doc = client.get_manifest(ref, digest).json()
        for child in [*doc.get("manifests", []), *([doc["subject"]] if "subject" in doc else [])]:
            if client.head_manifest(ref, child["digest"]) is None:
                missing.append(f"{digest} -> manifest {child['digest']}")
        for blob in [doc.get("config"), *doc.get("layers", [])]:
            if blob is not None and not client.blob_exists(ref, blob["digest"]):
                missing.append(f"{digest} -> blob {blob['digest']}")
    return missing


def test_registry_refusing_soci_v1_then_v2(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    """A registry that refuses manifests with ``subject``/``artifactType`` (400 MANIFEST_INVALID, as Docker
    Hub): V1 fails at once with one line that says so and points at V2, exit 5, nothing left behind and no
    manifest pushed; V2 through the same registry succeeds."""
    image = small_image(tmp_path, request)
    ref = push(registry, client, "compat/hub", image)
    work = tmp_path / "work"
    with HttpProxy(registry.host) as proxy:
        proxy.refuse_soci_v1()
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        proc = run_cli(
            "index", str(via), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work),
            timeout=120,
        )  # fmt: skip
        refused = [r for r in proxy.requests if r.injected]
        proxy.reset()

        assert proc.returncode == ExitCode.REGISTRY, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("soci-wrapper: error:")]
        assert len(errors) == 1, proc.stderr
        assert errors[0].startswith(
            "soci-wrapper: error: soci push: the registry refused the SOCI index manifest"
        )
        assert "HTTP 400" in errors[0] and "--soci-version V2" in errors[0]
        assert "Traceback" not in proc.stderr and "warning:" not in proc.stderr  # not retried
        assert len(refused) == 1 and refused[0].method == "PUT" and "/manifests/" in refused[0].path
        assert refused[0].request_body is not None and b'"subject"' in refused[0].request_body
        assert our_containerd_processes(work) == [] and list(work.iterdir()) == []
        # Nothing half-pushed: the refused manifest is not there, no referrers (nor their tag), and every
        # manifest in the repository has all it refers to.
        index_digest = refused[0].path.rsplit("/", 1)[1]
        assert client.head_manifest(ref, index_digest) is None
        assert client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1) == []
        assert client.list_tags(ref) == ["v1"]
        assert dangling_references(registry, client, ref) == []

        report = index_cli(via, soci_bin, work, "--soci-version", "V2", "--output-tag", "app-soci")
        puts = [r for r in proxy.requests if r.method == "PUT" and "/manifests/" in r.path]
    assert not any(r.injected for r in puts) and all(r.status == 201 for r in puts)
    assert all(r.request_body is not None for r in puts)  # the rule looked at every one of them
    check_v2_image(client, ref, image, "app-soci", report)
    assert dangling_references(registry, client, ref) == []

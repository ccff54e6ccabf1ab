"""Multi-platform images through the command line, with the real containerd, docker-registry and soci.

V1: every selected platform gets exactly one SOCI index, found from that platform's manifest (docker-registry
has no referrers API: through the ``sha256-<hex>`` tag); attestation manifests (``unknown/unknown``) are not
platforms; a platform whose layers are all under --min-layer-size gets none, and says why. V2: one image
index at --output-tag with, per platform, the annotated manifest and its SOCI index.

Layers are small (2 MiB, and 100 KiB ones under the 1 MiB minimum used throughout) to keep the runs fast.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import (
    AMD64,
    ARM64,
    ARMV7,
    ATTESTATION_MANIFEST,
    IN_TOTO,
    REFERENCE_DIGEST_ANNOTATION,
    REFERENCE_TYPE_ANNOTATION,
    S390X,
    Image,
    ImageIndex,
    LayerSpec,
    build_image,
    build_index,
    index_of,
)
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.core.models import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    Descriptor,
    Platform,
)
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

WRITES = ("POST", "PUT", "PATCH", "DELETE")
SMALL = 100 * 1024


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def two_layers(seed: int) -> list[LayerSpec]:
    """One layer that gets a zTOC (2 MiB) and one under the 1 MiB minimum."""
    return [LayerSpec(2 * MIB, seed=seed), LayerSpec(SMALL, seed=seed + 1)]


def index_cli(
    soci_bin: str, ref: Reference, *extra: str, work: Path, exit_code: int = 0
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``soci-wrapper index REF --json`` with a 1 MiB minimum layer size; the process and its JSON report."""
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work), "--json",
        *extra,
    )  # fmt: skip
    assert proc.returncode == exit_code, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert not work.exists() or list(work.iterdir()) == [], "the run directory was left behind"
    return proc, report


def platform_args(platforms: Sequence[Platform], how: str) -> list[str]:
    if how == "all":
        return ["--all-platforms"]
    return [arg for p in platforms for arg in ("--platform", str(p))]


def writes(requests: list[RecordedRequest]) -> list[str]:
    return [f"{r.method} {r.path}" for r in requests if r.method in WRITES]


def by_platform(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    indexes = report["indexes"]
    out = {i["platform"]: i for i in indexes}
    assert len(out) == len(indexes), f"a platform has more than one index: {indexes}"
    return out


def check_v1_index(client: RegistryClient, ref: Reference, image: Image, entry: dict[str, Any]) -> None:
    """``image`` has exactly one SOCI v1 index in the registry, the one ``entry`` (of the report) names: its
    subject is the platform's manifest and it holds one zTOC, for the 2 MiB layer."""
    big, small = image.layers
    assert entry["manifest_digest"] == image.digest
    found = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    assert [d.digest for d in found] == [entry["soci_index_digest"]], f"{image.platform}: {found}"
    doc = client.get_manifest(ref, entry["soci_index_digest"]).json()
    assert doc["subject"]["digest"] == image.digest
    assert doc["subject"]["mediaType"] == image.media_type
    assert SOCI_INDEX_V1 in (doc.get("artifactType"), doc["config"]["mediaType"])
    assert [z["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for z in doc["layers"]] == [big.digest]
    ztoc = doc["layers"][0]["digest"]
    assert client.blob_exists(ref, ztoc)

    assert entry["ztocs"] == 1
    assert [x["digest"] for x in entry["layers_indexed"]] == [big.digest]
    assert [x["digest"] for x in entry["layers_skipped"]] == [small.digest]
    layers = {x["digest"]: x for x in entry["layers"]}
    assert layers[big.digest]["status"] == "built" and layers[big.digest]["ztoc"] == ztoc
    assert layers[small.digest]["status"] == "skipped"
    assert "min-layer-size" in layers[small.digest]["reason"]


# -- the test images themselves -----------------------------------------------------------------------------
def test_attestation_manifests_are_built_and_pushed(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, request: pytest.FixtureRequest
) -> None:
    """The factory's buildx-style index: attestation manifests after the images, pushed with their blobs."""
    index = build_index(
        tmp_path, [LayerSpec(64 * 1024, seed=seed_for(request))], platforms=(AMD64, ARM64), attestations=True
    )
    ref = push(registry, client, "factory/attest", index)
    doc = client.get_manifest(ref).json()
    entries = [Descriptor.from_oci(m) for m in doc["manifests"]]
    platforms = ["linux/amd64", "linux/arm64/v8", "unknown/unknown", "unknown/unknown"]
    assert [str(e.platform) for e in entries] == platforms
    for image, entry in zip(index.images, entries[2:], strict=True):
        assert entry.annotations == {
            REFERENCE_TYPE_ANNOTATION: ATTESTATION_MANIFEST,
            REFERENCE_DIGEST_ANNOTATION: image.digest,
        }
        manifest = client.get_manifest(ref, entry.digest)
        assert manifest.descriptor.media_type == OCI_MANIFEST
        body = manifest.json()
        assert body["config"]["mediaType"] == OCI_CONFIG
        assert [x["mediaType"] for x in body["layers"]] == [IN_TOTO]
        with client.open_blob(ref, body["layers"][0]["digest"]) as stream:
            statement = json.loads(b"".join(stream))
        assert statement["subject"][0]["digest"] == {"sha256": image.digest.split(":", 1)[1]}
        assert client.blob_exists(ref, body["config"]["digest"])
    assert [a.is_attestation for a in index.manifests] == [False, False, True, True]


# -- V1 -----------------------------------------------------------------------------------------------------
@pytest.mark.soci
@pytest.mark.parametrize(
    ("oci", "platforms", "how"),
    [
        pytest.param(True, (AMD64, ARM64), "all", id="oci-2-all-platforms"),
        pytest.param(True, (AMD64, ARM64, S390X), "platform", id="oci-3-platform-flags"),
        pytest.param(False, (AMD64, ARM64), "platform", id="docker-2-platform-flags"),
        pytest.param(False, (AMD64, ARMV7, S390X), "all", id="docker-3-all-platforms"),
    ],
)
def test_v1_every_platform_gets_one_index(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
    oci: bool,
    platforms: tuple[Platform, ...],
    how: str,
) -> None:
    index = build_index(tmp_path, two_layers(seed_for(request)), platforms=platforms, oci=oci)
    assert index.media_type == (OCI_INDEX if oci else DOCKER_MANIFEST_LIST)
    assert {i.media_type for i in index.images} == {OCI_MANIFEST if oci else DOCKER_MANIFEST}
    ref = push(registry, client, f"multi/{'oci' if oci else 'docker'}{len(platforms)}", index)
    work = tmp_path / "work"
    selection = platform_args(platforms, how)

    _, report = index_cli(soci_bin, ref, *selection, work=work)
    assert report["status"] == "indexed"
    assert report["digest"] == index.digest
    assert sorted(report["platforms"]) == sorted(str(p) for p in platforms)
    assert report["not_indexed"] == []
    found = by_platform(report)
    assert sorted(found) == sorted(str(p) for p in platforms)
    for image in index.images:
        check_v1_index(client, ref, image, found[str(image.platform)])
    assert len({i["soci_index_digest"] for i in report["indexes"]}) == len(platforms)
    assert report["push"]["tool"] == "soci push" and report["push"]["attempts"] == 1

    # Again, through a proxy that records every request: found, reported, and nothing is written.
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        _, again = index_cli(soci_bin, via, *selection, work=work)
        requests = proxy.requests
    assert again["status"] == "already-indexed"
    assert {i["platform"]: i["soci_index_digest"] for i in again["indexes"]} == {
        p: i["soci_index_digest"] for p, i in found.items()
    }
    assert requests, "the rerun did not ask the registry"
    assert writes(requests) == []
    assert not any(layer.digest in r.path for r in requests for i in index.images for layer in i.layers)
    assert "pull" not in again["stages"] and again["push"] is None
    for image in index.images:
        assert len(client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)) == 1


@pytest.mark.soci
def test_v1_some_platforms_of_three(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    """Repeated --platform picks those platforms (arm64 without its variant matches arm64/v8); the other
    platform gets nothing."""
    index = build_index(tmp_path, two_layers(seed_for(request)), platforms=(AMD64, ARM64, S390X))
    ref = push(registry, client, "multi/subset", index)
    amd, arm, s390x = index.images
    _, report = index_cli(
        soci_bin, ref, "--platform", "linux/s390x", "--platform", "linux/arm64", work=tmp_path / "work"
    )
    assert sorted(report["platforms"]) == ["linux/arm64/v8", "linux/s390x"]
    found = by_platform(report)
    assert sorted(found) == ["linux/arm64/v8", "linux/s390x"]
    check_v1_index(client, ref, arm, found["linux/arm64/v8"])
    check_v1_index(client, ref, s390x, found["linux/s390x"])
    assert client.get_referrers(ref, amd.digest, artifact_type=SOCI_INDEX_V1) == []


@pytest.mark.soci
def test_v1_attestation_manifests_get_no_index(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    index = build_index(tmp_path, two_layers(seed_for(request)), platforms=(AMD64, ARM64), attestations=True)
    assert len(index.attestations) == 2
    ref = push(registry, client, "multi/attested", index)
    _, report = index_cli(soci_bin, ref, "--all-platforms", work=tmp_path / "work")
    assert report["status"] == "indexed"
    assert report["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert report["not_indexed"] == []
    found = by_platform(report)
    assert sorted(found) == ["linux/amd64", "linux/arm64/v8"]
    for image in index.images:
        check_v1_index(client, ref, image, found[str(image.platform)])
    for attestation in index.attestations:
        assert client.get_referrers(ref, attestation.digest) == []
        assert attestation.digest not in json.dumps(report["indexes"])

    again = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--all-platforms",
        "--work-dir", str(tmp_path / "work"),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "already indexed" in again.stderr
    assert "unknown" not in again.stderr + again.stdout


@pytest.mark.soci
def test_v1_platform_with_only_small_layers_is_reported_not_pulled(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    """A platform whose every layer is under --min-layer-size, between two with a 2 MiB layer: the others
    are indexed, it is named in ``not_indexed`` with the reason and a warning, its layers are never fetched,
    and the exit code is 0."""
    seed = seed_for(request)
    amd = build_image(tmp_path, two_layers(seed), platform=AMD64)
    arm = build_image(
        tmp_path, [LayerSpec(SMALL, seed=seed + 10), LayerSpec(SMALL, seed=seed + 11)], platform=ARM64
    )
    s390x = build_image(tmp_path, two_layers(seed + 20), platform=S390X)
    ref = push(registry, client, "multi/partial", index_of([amd, arm, s390x]))
    work = tmp_path / "work"
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        proc, report = index_cli(soci_bin, via, "--all-platforms", work=work)
        requests = proxy.requests

    assert report["status"] == "indexed"
    assert report["platforms"] == ["linux/amd64", "linux/arm64/v8", "linux/s390x"]
    assert sorted(by_platform(report)) == ["linux/amd64", "linux/s390x"]
    assert len(report["not_indexed"]) == 1
    skipped = report["not_indexed"][0]
    assert skipped["platform"] == "linux/arm64/v8" and skipped["manifest_digest"] == arm.digest
    assert "every layer is under --min-layer-size" in skipped["reason"]
    assert "warning: linux/arm64/v8: every layer is under --min-layer-size" in proc.stderr
    fetched = {r.path.rsplit("/", 1)[-1] for r in requests if r.method == "GET" and "/blobs/" in r.path}
    assert not fetched & {layer.digest for layer in arm.layers}, "a layer of the skipped platform was pulled"
    assert amd.layers[0].digest in fetched and s390x.layers[0].digest in fetched
    found = by_platform(report)
    check_v1_index(client, ref, amd, found["linux/amd64"])
    check_v1_index(client, ref, s390x, found["linux/s390x"])
    assert client.get_referrers(ref, arm.digest, artifact_type=SOCI_INDEX_V1) == []

    # Rerun: the indexable platforms have their index; the other is still reported, and nothing is pushed.
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        _, again = index_cli(soci_bin, via, "--all-platforms", work=work)
        assert writes(proxy.requests) == []
    assert again["status"] == "already-indexed"
    assert [s["platform"] for s in again["not_indexed"]] == ["linux/arm64/v8"]


@pytest.mark.soci
def test_v1_no_platform_with_a_large_layer_is_exit_8(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    seed = seed_for(request)
    index = build_index(tmp_path, [LayerSpec(SMALL, seed=seed)], platforms=(AMD64, ARM64))
    ref = push(registry, client, "multi/small", index)
    work = tmp_path / "work"
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        proc, report = index_cli(soci_bin, via, "--all-platforms", work=work, exit_code=8)
        requests = proxy.requests
    assert report["exit_code"] == 8
    assert "every layer" in report["error"] and "min-layer-size" in proc.stderr
    assert writes(requests) == []
    assert not any("/blobs/" in r.path for r in requests if r.method == "GET")
    for image in index.images:
        assert client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1) == []


# -- V2 -----------------------------------------------------------------------------------------------------
@pytest.mark.soci
def test_v2_two_platforms(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    index: ImageIndex = build_index(tmp_path, two_layers(seed_for(request)), platforms=(AMD64, ARM64))
    ref = push(registry, client, "multi/v2", index)
    tag = "app-soci"
    work = tmp_path / "work"
    args = ("--all-platforms", "--soci-version", "V2", "--output-tag", tag)
    _, report = index_cli(soci_bin, ref, *args, work=work)
    assert report["status"] == "indexed" and report["pushed_tag"] == tag
    assert report["not_indexed"] == []

    out = client.get_manifest(ref, tag)
    assert out.descriptor.digest == report["output_digest"]
    assert out.descriptor.media_type == OCI_INDEX
    entries = [Descriptor.from_oci(m) for m in out.json()["manifests"]]
    soci_indexes = {e.digest: e for e in entries if e.artifact_type == SOCI_INDEX_V2}
    manifests = [e for e in entries if e.artifact_type != SOCI_INDEX_V2]
    assert len(entries) == 4 and len(soci_indexes) == 2 and len(manifests) == 2
    found = by_platform(report)
    assert sorted(found) == ["linux/amd64", "linux/arm64/v8"]
    for image in index.images:
        mine = [e for e in manifests if e.platform is not None and image.platform.matches(e.platform)]
        assert len(mine) == 1, f"{image.platform}: {manifests}"
        rewritten = client.get_manifest(ref, mine[0].digest).json()
        original = json.loads(image.manifest.read_bytes())
        assert rewritten["config"]["digest"] == original["config"]["digest"]
        assert [x["digest"] for x in rewritten["layers"]] == [x["digest"] for x in original["layers"]]
        soci_digest = rewritten["annotations"][SOCI_INDEX_DIGEST_ANNOTATION]
        assert soci_digest in soci_indexes, "the annotated SOCI index is not in the image index"
        soci_entry = soci_indexes[soci_digest]
        assert soci_entry.platform is not None and image.platform.matches(soci_entry.platform)
        doc = client.get_manifest(ref, soci_digest).json()
        assert "subject" not in doc
        assert SOCI_INDEX_V2 in (doc.get("artifactType"), doc["config"]["mediaType"])
        assert [z["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for z in doc["layers"]] == [
            image.layers[0].digest
        ]
        assert client.blob_exists(ref, doc["layers"][0]["digest"])
        entry = found[str(image.platform)]
        assert entry["soci_index_digest"] == soci_digest
        assert [x["digest"] for x in entry["layers_indexed"]] == [image.layers[0].digest]
    assert len({s for s in soci_indexes}) == 2

    _, again = index_cli(soci_bin, ref, *args, work=work)
    assert again["status"] == "already-indexed"
    assert {i["platform"]: i["soci_index_digest"] for i in again["indexes"]} == {
        p: i["soci_index_digest"] for p, i in found.items()
    }
    assert client.get_manifest(ref, tag).descriptor.digest == report["output_digest"]


@pytest.mark.soci
def test_v2_keeps_attestations_pointing_at_the_rewritten_manifests(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    """soci convert drops the attestation entries' annotations (and rewrites the manifests they refer to):
    the SOCI-enabled image must still say which manifest each attestation is about."""
    index = build_index(tmp_path, two_layers(seed_for(request)), platforms=(AMD64, ARM64), attestations=True)
    ref = push(registry, client, "multi/v2-attested", index)
    _, report = index_cli(
        soci_bin,
        ref,
        "--all-platforms",
        "--soci-version",
        "V2",
        "--output-tag",
        "soci",
        work=tmp_path / "work",
    )
    out = client.get_manifest(ref, "soci").json()["manifests"]
    rewritten = {
        str(Descriptor.from_oci(m).platform): m["digest"]
        for m in out
        if m.get("platform", {}).get("os") != "unknown" and m.get("artifactType") != SOCI_INDEX_V2
    }
    attestations = [m for m in out if (m.get("annotations") or {}).get(REFERENCE_TYPE_ANNOTATION)]
    assert len(attestations) == 2
    for image, attestation in zip(index.images, index.attestations, strict=True):
        entry = next(m for m in attestations if m["digest"] == attestation.digest)
        assert entry["annotations"][REFERENCE_TYPE_ANNOTATION] == ATTESTATION_MANIFEST
        assert entry["annotations"][REFERENCE_DIGEST_ANNOTATION] == rewritten[str(image.platform)]
        assert rewritten[str(image.platform)] != image.digest  # convert did rewrite it
        assert client.get_manifest(ref, attestation.digest).descriptor.digest == attestation.digest
    assert client.get_manifest(ref, "soci").descriptor.digest == report["output_digest"]

"""The index pipeline through the command line, against a real registry and containerd (and the real soci).

Tests that need soci take the ``soci_bin`` fixture: where bootstrap could not build soci they are skipped with
the build error as the reason; nothing stands in for soci in them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.sociartifacts import push_soci_v1, push_soci_v2
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, faulty_soci, our_containerd_processes, push, run_cli, seed_for
from tests.imagefactory import (
    AMD64,
    ARM64,
    LayerSpec,
    build_image,
    build_index,
    index_of,
)
from tests.proxy import HttpProxy
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import Image as ImageRecord
from wrapper.core.models import (
    OCI_INDEX,
    OCI_MANIFEST,
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    Descriptor,
)
from wrapper.core.options import PullOptions
from wrapper.core.reference import Reference
from wrapper.image.pull import pull
from wrapper.image.push import ImagePusher
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

NO_SOCI = "/nonexistent/soci"


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def two_layers(seed: int) -> list[LayerSpec]:
    return [LayerSpec(2 * MIB, seed=seed), LayerSpec(100 * 1024, seed=seed + 1)]


def referrers(client: RegistryClient, ref: Reference, subject: str) -> list[Descriptor]:
    return client.get_referrers(ref, subject, artifact_type=SOCI_INDEX_V1)


# -- idempotency and failures ----------------------------------------------------------------------------
def test_v1_already_indexed_is_a_noop(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "done/v1", image)
    index_digest = push_soci_v1(client, ref, image)

    # soci and containerd are checked before any network work, but neither is run: no work directory.
    work = tmp_path / "work"
    args = ["index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work)]
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "already-indexed"
    assert [i["soci_index_digest"] for i in report["indexes"]] == [index_digest]
    assert "pull" not in report["stages"] and "containerd" not in report["stages"]
    assert not work.exists() or list(work.iterdir()) == []

    human = run_cli(*args, "--output-tag", "ignored-for-v1")
    assert human.returncode == 0
    assert "already indexed" in human.stderr
    assert "--output-tag is ignored" in human.stderr


def test_v2_already_indexed_is_a_noop(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "done/v2", image)
    _, soci_digest = push_soci_v2(client, ref, image, "app-soci")

    proc = run_cli(
        "index", str(ref), "--soci-version", "v2", "--output-tag", "app-soci", "--json", "--soci-bin", soci_bin,
        "--min-layer-size", "1MiB",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "already-indexed"
    assert report["indexes"][0]["soci_index_digest"] == soci_digest
    assert report["pushed_tag"] == "app-soci"
    assert "pull" not in report["stages"]


@pytest.mark.soci
def test_v2_output_tag_of_another_image_does_not_count(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    image = build_image(tmp_path, two_layers(seed))
    other = build_image(tmp_path, two_layers(seed + 100))
    ref = push(registry, client, "other/v2", image)
    push(registry, client, "other/v2", other)
    push_soci_v2(client, ref, other, "app-soci")  # the tag holds a SOCI-enabled *other* image

    report = index_cli(soci_bin, ref, "--soci-version", "V2", "--output-tag", "app-soci", work=tmp_path / "w")
    assert report["status"] == "indexed"  # it went on to index this image, and moved the tag to it
    out = client.get_manifest(ref, "app-soci").json()
    rewritten = [m for m in out["manifests"] if m.get("artifactType") != SOCI_INDEX_V2]
    layers = client.get_manifest(ref, rewritten[0]["digest"]).json()["layers"]
    assert [x["digest"] for x in layers] == [x.digest for x in image.layers]


def test_missing_soci_fails_before_any_network_work(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, request
) -> None:
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "nosoci/app", image)
    work = tmp_path / "work"
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        proc = run_cli("index", str(via), "--soci-bin", NO_SOCI, "--work-dir", str(work))
        assert proxy.requests == []  # not one request to the registry
    assert proc.returncode == 9
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"soci-wrapper: error: soci not found at {NO_SOCI} (run scripts/bootstrap.sh, set SOCI_BIN or pass --soci-bin)"
    ]
    assert not work.exists() or list(work.iterdir()) == []


def test_failing_soci_stops_containerd_and_removes_the_work_dir(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    """Whatever soci does, the run's containerd is stopped and its directory removed (here the real soci's
    create is made to fail)."""
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "failing/app", image)
    work = tmp_path / "work"
    failing = faulty_soci(tmp_path, soci_bin, create="fail")
    proc = run_cli(
        "index", str(ref), "--soci-bin", failing, "--work-dir", str(work), "--min-layer-size", "1MiB"
    )
    assert proc.returncode == 7, proc.stderr
    assert "soci create failed (exit 1): injected failure" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert our_containerd_processes(work) == []
    assert list(work.iterdir()) == []


def test_keep_work_dir_keeps_containerd_log(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "keep/app", image)
    work = tmp_path / "work"
    proc = run_cli(
        "index", str(ref), "--soci-bin", faulty_soci(tmp_path, soci_bin, create="fail"), "--work-dir", str(work),
        "--keep-work-dir", "--min-layer-size", "1MiB",
    )  # fmt: skip
    assert proc.returncode == 7
    kept = list(work.iterdir())
    assert len(kept) == 1
    assert any(p.name.endswith(".log") for p in kept[0].rglob("*"))
    assert our_containerd_processes(work) == []


def test_v2_push_from_containerd_uploads_only_new_content(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    containerd_client: ContainerdClient,
    request,
) -> None:
    """The project's own push of a SOCI-enabled image (what follows ``soci convert``), built here by hand in
    containerd: new blobs and manifests go up, the original layers are only HEADed, the tag comes last."""
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "push/app", image)
    pull(
        client, containerd_client, ref, PullOptions(min_layer_size=MIB)
    )  # the small layer is not in containerd

    def put(data: bytes, labels: dict[str, str] | None = None) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        containerd_client.content.write(
            f"test-{digest}", lambda off: [data[off:]], total=len(data), expected=digest, labels=labels
        )
        return Descriptor(OCI_MANIFEST, digest, len(data))

    with containerd_client.lease():
        ztoc = put(b"a ztoc")
        empty = put(b"{}")
        soci_doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SOCI_INDEX_V2,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.digest, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": ztoc.digest, "size": ztoc.size}],
        }
        soci = put(json.dumps(soci_doc).encode())
        manifest = json.loads(image.manifest.read_bytes())
        manifest["annotations"] = {SOCI_INDEX_DIGEST_ANNOTATION: soci.digest}
        annotated = put(json.dumps(manifest).encode())
        index_doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**annotated.to_oci(), "platform": AMD64.to_oci()},
                {**soci.to_oci(), "artifactType": SOCI_INDEX_V2, "platform": AMD64.to_oci()},
            ],
        }
        top = put(json.dumps(index_doc).encode())
        name = f"{ref.registry}/{ref.repository}:converted"
        containerd_client.images.put(ImageRecord(name, Descriptor(OCI_INDEX, top.digest, top.size), {}))

        with HttpProxy(registry.host) as proxy, RegistryClient(CredentialStore(use_ecr=False)) as via_client:
            dest = Reference(proxy.host, ref.repository, tag="app-soci")
            result = ImagePusher(containerd_client, via_client).push(name, dest)
            requests = proxy.requests

    assert result.digest == top.digest
    writes = [r for r in requests if r.method in ("POST", "PUT", "PATCH")]
    for layer in image.layers:
        assert not any(layer.digest in r.path for r in writes), "an original layer was uploaded again"
    assert set(result.blobs_uploaded) == {ztoc.digest, empty.digest}
    manifest_puts = [r.path for r in requests if r.method == "PUT" and "/manifests/" in r.path]
    assert manifest_puts[-1].endswith("/manifests/app-soci"), manifest_puts
    last_blob = max(i for i, r in enumerate(requests) if "/blobs/" in r.path)
    first_manifest = min(i for i, r in enumerate(requests) if r.method == "PUT" and "/manifests/" in r.path)
    assert last_blob < first_manifest
    got = client.get_manifest(ref, "app-soci")
    assert got.descriptor.digest == top.digest


# -- end to end with the real soci ------------------------------------------------------------------------
def index_cli(soci_bin: str, ref: Reference, *extra: str, work: Path) -> dict[str, Any]:
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work), "--json",
        *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert our_containerd_processes(work) == []
    assert not work.exists() or list(work.iterdir()) == []  # an already-indexed image makes none
    return result


@pytest.mark.soci
def test_v1_end_to_end(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "e2e/v1", image)
    report = index_cli(soci_bin, ref, work=tmp_path / "work")
    assert report["status"] == "indexed"
    found = referrers(client, ref, image.digest)
    assert len(found) == 1 and found[0].digest == report["indexes"][0]["soci_index_digest"]
    doc = client.get_manifest(ref, found[0].digest).json()
    assert doc["subject"]["digest"] == image.digest
    assert SOCI_INDEX_V1 in (doc.get("artifactType"), doc["config"]["mediaType"])
    covered = [layer["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for layer in doc["layers"]]
    assert covered == [image.layers[0].digest]  # the 2 MiB layer; not the 100 KiB one

    again = index_cli(soci_bin, ref, work=tmp_path / "work")
    assert again["status"] == "already-indexed"
    assert len(referrers(client, ref, image.digest)) == 1
    forced = index_cli(soci_bin, ref, "--force", work=tmp_path / "work")
    assert forced["status"] == "indexed"
    # --force builds the index again from the layer (the image's own index is not a source of zTOCs to
    # reuse), and it is the same index.
    assert [x["status"] for x in forced["indexes"][0]["layers"] if x["size"] >= MIB] == ["built"]
    assert forced["indexes"][0]["soci_index_digest"] == report["indexes"][0]["soci_index_digest"]

    # The tool's own pushes (as an ECR push event would name them) are not images to index again.
    fallback_tag = "sha256-" + image.digest.removeprefix("sha256:")
    for own in (
        Reference(ref.registry, ref.repository, digest=found[0].digest),
        Reference(ref.registry, ref.repository, tag=fallback_tag),
    ):
        skipped = index_cli(soci_bin, own, "--force", work=tmp_path / "work")
        assert skipped["status"] == "not-an-image" and skipped["indexes"] == [], skipped
    assert len(referrers(client, ref, image.digest)) == 1


@pytest.mark.soci
def test_v1_all_platforms(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    index = build_index(tmp_path, two_layers(seed_for(request)), platforms=(AMD64, ARM64))
    ref = push(registry, client, "e2e/multi", index)
    report = index_cli(soci_bin, ref, "--all-platforms", work=tmp_path / "work")
    assert sorted(i["platform"] for i in report["indexes"]) == ["linux/amd64", "linux/arm64/v8"]
    for img in index.images:
        assert len(referrers(client, ref, img.digest)) == 1


@pytest.mark.soci
def test_v2_end_to_end(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    image = build_image(tmp_path, two_layers(seed_for(request)))
    ref = push(registry, client, "e2e/v2", image)
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        report = index_cli(
            soci_bin, via, "--soci-version", "V2", "--output-tag", "app-soci", work=tmp_path / "work"
        )
        uploads = [r for r in proxy.requests if r.method in ("POST", "PUT", "PATCH")]
    assert report["pushed_tag"] == "app-soci"
    for layer in image.layers:
        assert not any(layer.digest in r.path for r in uploads)
    out = client.get_manifest(ref, "app-soci").json()
    entries = [Descriptor.from_oci(m) for m in out["manifests"]]
    soci_entries = [e for e in entries if e.artifact_type == SOCI_INDEX_V2]
    images = [e for e in entries if e.artifact_type != SOCI_INDEX_V2]
    assert len(soci_entries) == 1 and len(images) == 1
    rewritten = client.get_manifest(ref, images[0].digest).json()
    original = json.loads(image.manifest.read_bytes())
    assert rewritten["config"]["digest"] == original["config"]["digest"]
    assert [x["digest"] for x in rewritten["layers"]] == [x["digest"] for x in original["layers"]]
    assert rewritten["annotations"][SOCI_INDEX_DIGEST_ANNOTATION] == soci_entries[0].digest

    again = index_cli(
        soci_bin, via := ref, "--soci-version", "V2", "--output-tag", "app-soci", work=tmp_path / "w2"
    )
    assert again["status"] == "already-indexed", via
    output = Reference(ref.registry, ref.repository, tag="app-soci")
    for version in ("V1", "V2"):
        skipped = index_cli(
            soci_bin, output, "--soci-version", version, "--output-tag", "x", work=tmp_path / "w3"
        )
        assert skipped["status"] == "not-an-image" and skipped["reason"] == "it is a SOCI-enabled image"


@pytest.mark.soci
def test_all_small_layers_is_nothing_to_index(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    image = build_image(tmp_path, [LayerSpec(64 * 1024, seed=seed_for(request))])
    ref = push(registry, client, "e2e/small", image)
    work = tmp_path / "work"
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--work-dir", str(work), "--min-layer-size", "1MiB"
    )
    assert proc.returncode == 8, proc.stderr
    assert "nothing to index" in proc.stderr and "--min-layer-size" in proc.stderr
    # Known from the manifest: no containerd was started, nothing was pulled, no work directory was made.
    assert our_containerd_processes(work) == [] and not work.exists()


@pytest.mark.soci
def test_v1_platform_with_only_small_layers_does_not_stop_the_others(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    amd = build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed)], platform=AMD64)
    arm = build_image(tmp_path, [LayerSpec(64 * 1024, seed=seed + 1)], platform=ARM64)
    ref = push(registry, client, "e2e/partial", index_of([amd, arm]))
    work = tmp_path / "work"
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work),
        "--all-platforms", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [i["platform"] for i in report["indexes"]] == ["linux/amd64"]
    assert "linux/arm64/v8: every layer is under --min-layer-size" in proc.stderr
    assert len(referrers(client, ref, amd.digest)) == 1
    assert referrers(client, ref, arm.digest) == []

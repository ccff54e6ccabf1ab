"""``soci-wrapper index --from-oci PATH IMAGE_REF``: an OCI image layout (directory or tar) imported into
containerd, pushed to the registry and indexed by the real soci, V1 and V2; and layouts that are not usable.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, our_containerd_processes, push, run_cli, seed_for
from tests.imagefactory import AMD64, ARM64, Blob, Image, ImageIndex, LayerSpec, build_image, build_index
from tests.proxy import HttpProxy
from wrapper.core.errors import NotFoundError
from wrapper.core.models import SOCI_INDEX_V1, SOCI_INDEX_V2, Descriptor
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def layers(seed: int) -> list[LayerSpec]:
    return [LayerSpec(2 * MIB, seed=seed), LayerSpec(64 * 1024, seed=seed + 1)]


def write_layout(directory: Path, images: list[tuple[Image | ImageIndex, str]]) -> Path:
    """An OCI image layout of ``images``, each named by a ref.name annotation in index.json."""
    blobs_dir = directory / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)

    def put(blob: Blob) -> None:
        target = blobs_dir / blob.digest.removeprefix("sha256:")
        with target.open("wb") as f:
            for chunk in blob.chunks():
                f.write(chunk)

    entries = []
    for image, name in images:
        platform_images = image.manifests if isinstance(image, ImageIndex) else (image,)
        for one in platform_images:
            for blob in (*one.blobs, one.manifest):
                put(blob)
        top = image.index if isinstance(image, ImageIndex) else image.manifest
        put(top)
        d = top.descriptor
        entries.append(Descriptor(d.media_type, d.digest, d.size, annotations={REF_NAME: name}).to_oci())
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(
        json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        )
    )
    return directory


def as_tar(directory: Path) -> Path:
    archive = directory.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    shutil.rmtree(directory)
    return archive


def from_oci(soci_bin: str, layout: Path, ref: Reference, *extra: str, work: Path) -> dict[str, object]:
    proc = run_cli(
        "index", "--from-oci", str(layout), str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB",
        "--work-dir", str(work), "--json", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert our_containerd_processes(work) == []
    assert not work.exists() or list(work.iterdir()) == []
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.soci
def test_v1_from_directory(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    image = build_image(tmp_path / "build", layers(seed_for(request)))
    layout = write_layout(tmp_path / "layout", [(image, "1.0")])
    ref = Reference(registry.host, "oci/v1", tag="1.0")
    report = from_oci(soci_bin, layout, ref, work=tmp_path / "work")
    assert report["status"] == "indexed" and report["digest"] == image.digest
    assert client.get_manifest(ref).descriptor.digest == image.digest
    found = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    assert [f.digest for f in found] == [report["indexes"][0]["soci_index_digest"]]  # type: ignore[index]


@pytest.mark.soci
def test_v2_two_platforms_from_tar_skips_what_the_registry_has(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    index = build_index(tmp_path / "build", layers(seed_for(request)), platforms=(AMD64, ARM64))
    other = build_image(tmp_path / "build", layers(seed_for(request) + 99))
    # Two images in the layout: the one whose ref.name is the tag is chosen.
    layout = as_tar(write_layout(tmp_path / "layout", [(other, "other"), (index, "2.0")]))
    push(registry, client, "oci/v2", index.images[0])  # amd64's blobs are in the registry already
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, "oci/v2", tag="2.0")
        report = from_oci(
            soci_bin, layout, via, "--all-platforms", "--soci-version", "V2", "--output-tag", "2.0-soci",
            work=tmp_path / "work",
        )  # fmt: skip
        uploads = [r.path for r in proxy.requests if r.method in ("POST", "PUT", "PATCH")]
    assert report["digest"] == index.digest
    for blob in index.images[0].blobs:
        assert not any(blob.digest in path for path in uploads), blob.digest
    for blob in index.images[1].layers:
        assert any(blob.digest in path for path in uploads), blob.digest
    ref = Reference(registry.host, "oci/v2", tag="2.0")
    assert client.get_manifest(ref).descriptor.digest == index.digest
    out = client.get_manifest(ref, "2.0-soci").json()
    entries = [Descriptor.from_oci(m) for m in out["manifests"]]
    assert len([e for e in entries if e.artifact_type == SOCI_INDEX_V2]) == 2
    assert other.digest not in json.dumps(report)


def _not_a_layout(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    (tmp_path / "junk").write_bytes(b"not a tar at all\n" * 100)
    return tmp_path / "junk", "not an OCI image layout"


def _missing_blob(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    image = build_image(tmp_path / "build", layers(seed_for(request)))
    layout = write_layout(tmp_path / "layout", [(image, "1.0")])
    (layout / "blobs" / "sha256" / image.layers[0].digest.removeprefix("sha256:")).unlink()
    return as_tar(layout), f"blob {image.layers[0].digest} is missing"


def _damaged_blob(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    image = build_image(tmp_path / "build", layers(seed_for(request)))
    layout = write_layout(tmp_path / "layout", [(image, "1.0")])
    path = layout / "blobs" / "sha256" / image.layers[0].digest.removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: containerd refuses it at commit
    path.write_bytes(bytes(data))
    return layout, f"blob {image.layers[0].digest} is damaged"


def _two_images(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    seed = seed_for(request)
    a = build_image(tmp_path / "build", layers(seed))
    b = build_image(tmp_path / "build", layers(seed + 50))
    return write_layout(tmp_path / "layout", [(a, "alpha"), (b, "beta")]), "ref.name values: alpha, beta"


@pytest.mark.soci
@pytest.mark.parametrize("make", [_not_a_layout, _missing_blob, _damaged_blob, _two_images])
def test_bad_layouts(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
    make: object,
) -> None:
    layout, expected = make(tmp_path, request)  # type: ignore[operator]
    ref = Reference(registry.host, "oci/bad", tag="1.0")
    work = tmp_path / "work"
    proc = run_cli(
        "index", "--from-oci", str(layout), str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB",
        "--work-dir", str(work), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert str(layout) in lines[0]
    assert our_containerd_processes(work) == []
    assert not work.exists() or list(work.iterdir()) == []
    with pytest.raises(NotFoundError):
        client.get_manifest(ref)

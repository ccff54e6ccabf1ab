from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

from tests.imagefactory import (
    AMD64,
    ARM64,
    FileSpec,
    LayerSpec,
    build_image,
    build_index,
    build_layer,
    schema1_manifest,
)
from wrapper.core.models import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Platform,
)

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_layer_is_a_real_deterministic_tar(tmp_path):
    spec = LayerSpec(2 * MiB, files=(FileSpec("a/b/one.bin", MiB), FileSpec("two.bin", MiB, 0o755)), seed=5)
    layer = build_layer(tmp_path / "a", spec)
    again = build_layer(tmp_path / "b", spec)  # built afresh in another directory
    assert layer.descriptor == again.descriptor and layer.diff_id == again.diff_id
    assert layer.descriptor.media_type == OCI_LAYER_GZIP
    data = layer.read_bytes()
    assert digest_of(data) == layer.digest and len(data) == layer.size
    raw = gzip.decompress(data)
    assert digest_of(raw) == layer.diff_id
    # Random content: compression gains almost nothing, so the blob is about the requested size.
    assert 2 * MiB <= layer.size <= 2 * MiB + 64 * 1024
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["a"].isdir() and members["a/b"].isdir()
        assert members["a/b/one.bin"].size == MiB and members["two.bin"].mode == 0o755
        assert all(m.mtime == 0 for m in members.values())
        first = tar.extractfile("a/b/one.bin").read()  # type: ignore[union-attr]
    assert len(set(first[:4096])) > 200
    assert build_layer(tmp_path / "a", LayerSpec(2 * MiB, seed=6)).digest != layer.digest


def test_uncompressed_layer_and_reuse(tmp_path):
    layer = build_layer(tmp_path, LayerSpec(100_000, compress=None, seed=1))
    assert layer.descriptor.media_type == OCI_LAYER
    assert layer.digest == layer.diff_id
    assert build_layer(tmp_path, LayerSpec(100_000, compress=None, seed=1)).path == layer.path
    assert (
        build_layer(tmp_path, LayerSpec(100_000, seed=1), oci=False).descriptor.media_type
        == DOCKER_LAYER_GZIP
    )


def test_image_config_and_manifest(tmp_path):
    image = build_image(tmp_path, [LayerSpec(MiB, seed=1), LayerSpec(50_000, seed=2, compress=None)])
    config = json.loads(image.config.read_bytes())
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    manifest = json.loads(image.manifest.read_bytes())
    assert manifest["mediaType"] == OCI_MANIFEST == image.media_type
    assert manifest["config"]["digest"] == image.config.digest == digest_of(image.config.read_bytes())
    assert [d["digest"] for d in manifest["layers"]] == [layer.digest for layer in image.layers]
    assert image.digest == digest_of(image.manifest.read_bytes())


def test_index_per_platform(tmp_path):
    index = build_index(tmp_path, [LayerSpec(MiB, seed=1)])
    doc = json.loads(index.index.read_bytes())
    assert doc["mediaType"] == OCI_INDEX
    assert [Platform.from_oci(m["platform"]) for m in doc["manifests"]] == [AMD64, ARM64]
    assert index.images[0].layers[0].digest != index.images[1].layers[0].digest
    arm_config = json.loads(index.images[1].config.read_bytes())
    assert (arm_config["architecture"], arm_config["variant"]) == ("arm64", "v8")
    docker = build_index(tmp_path, [LayerSpec(MiB, seed=1)], oci=False)
    assert docker.media_type == DOCKER_MANIFEST_LIST
    assert docker.images[0].media_type == DOCKER_MANIFEST
    assert docker.images[0].config.descriptor.media_type == DOCKER_CONFIG


def test_schema1_manifest_shape(tmp_path):
    layer = build_layer(tmp_path, LayerSpec(1000, seed=1))
    body = schema1_manifest("app", "old", layer)
    doc = json.loads(body)
    assert doc["schemaVersion"] == 1 and doc["fsLayers"] == [{"blobSum": layer.digest}]
    assert doc["signatures"][0]["header"]["alg"] == "ES256"
    kid = doc["signatures"][0]["header"]["jwk"]["kid"]
    assert len(kid.split(":")) == 12

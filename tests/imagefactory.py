"""Deterministic test images built in Python: real tar layers, configs, manifests, indexes.

An index can also hold buildx-style attestation manifests (``build_attestation``): platform
``unknown/unknown``, annotated with the image manifest they describe, with one in-toto JSON layer.

Layers are streamed to files (never built in memory), with their digests, sizes and diff_ids computed
while writing. File contents are pseudo-random bytes from ``random.Random(seed)``, so gzip cannot
shrink them: a layer's compressed size is close to the requested size. The same spec gives the same
bytes (and digests) on every run; built layers are reused from ``directory`` when present.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wrapper.core.models import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
)
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
S390X = Platform("linux", "s390x")
ARMV7 = Platform("linux", "arm", "v7")
UNKNOWN = Platform("unknown", "unknown")

# buildx attestation manifests: what they are annotated with in the index, and what their layer holds.
IN_TOTO = "application/vnd.in-toto+json"
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
REFERENCE_DIGEST_ANNOTATION = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST = "attestation-manifest"
PREDICATE_TYPE_ANNOTATION = "in-toto.io/predicate-type"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v0.2"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """A file of ``size`` pseudo-random bytes; or of ``data`` (its size is then ``len(data)``); or, with
    ``link``, a symbolic link to that target (runnable images: a shell and the links that name it)."""

    path: str
    size: int
    mode: int = 0o644
    data: bytes | None = None
    link: str | None = None

    def identity(self) -> tuple[object, ...]:
        content = hashlib.sha256(self.data).hexdigest() if self.data is not None else None
        return (self.path, self.size, self.mode, *((content, self.link) if content or self.link else ()))


@dataclass(frozen=True)
class LayerSpec:
    """A layer: ``files`` (default: one file of ``size_bytes``) filled with bytes from ``seed``."""

    size_bytes: int
    files: tuple[FileSpec, ...] = ()
    compress: Literal["gzip"] | None = "gzip"
    seed: int = 0

    def file_list(self) -> tuple[FileSpec, ...]:
        return self.files or (FileSpec(f"data/blob-{self.seed}.bin", self.size_bytes),)

    def key(self) -> str:
        text = json.dumps([self.size_bytes, [f.identity() for f in self.file_list()], self.compress])
        return f"{self.seed}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Blob:
    """Content with its descriptor: on disk (``path``) or, for small JSON documents, in memory (``data``)."""

    descriptor: Descriptor
    path: Path | None = None
    data: bytes | None = None

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        if self.data is not None:
            for start in range(0, len(self.data), size):
                yield self.data[start : start + size]
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            while chunk := f.read(size):
                yield chunk

    def source(self) -> Callable[[], Iterable[bytes]]:
        """For RegistryClient.push_blob: a callable that starts the byte stream afresh."""
        return self.chunks

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else b"".join(self.chunks())


@dataclass(frozen=True)
class Layer(Blob):
    diff_id: str = ""


@dataclass(frozen=True)
class Image:
    platform: Platform
    config: Blob
    layers: tuple[Layer, ...]
    manifest: Blob
    # Annotations of this manifest's entry in an index (an attestation's reference to its image).
    index_annotations: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def is_attestation(self) -> bool:
        return self.index_annotations.get(REFERENCE_TYPE_ANNOTATION) == ATTESTATION_MANIFEST

    @property
    def media_type(self) -> str:
        return self.manifest.descriptor.media_type

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)

    def platform_descriptor(self) -> Descriptor:
        d = self.manifest.descriptor
        return Descriptor(
            d.media_type, d.digest, d.size, annotations=dict(self.index_annotations), platform=self.platform
        )


@dataclass(frozen=True)
class ImageIndex:
    """``images``: the platforms' manifests; ``attestations``: buildx attestation manifests (after them in
    the index, as buildx writes it)."""

    images: tuple[Image, ...]
    index: Blob
    attestations: tuple[Image, ...] = ()

    @property
    def digest(self) -> str:
        return self.index.digest

    @property
    def manifests(self) -> tuple[Image, ...]:
        """Every manifest the index lists, in its order."""
        return (*self.images, *self.attestations)

    @property
    def media_type(self) -> str:
        return self.index.descriptor.media_type


# Building ---------------------------------------------------------------------------------------------
class _HashingWriter(io.RawIOBase):
    def __init__(self, target: Any) -> None:
        self._target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self.size += len(view)
        self._target.write(view)
        return len(view)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _RandomReader(io.RawIOBase):
    """``size`` pseudo-random bytes, generated as they are read."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng = rng
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left
        n = min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n) if n else b""


def _json_blob(document: dict[str, Any], media_type: str) -> Blob:
    data = json.dumps(document, separators=(",", ":")).encode()
    return Blob(Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)), data=data)


def build_layer(directory: Path, spec: LayerSpec, *, oci: bool = True) -> Layer:
    """Write the layer tar (gzip-compressed unless ``spec.compress`` is None) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if spec.compress == "gzip":
        media_type = OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP
        suffix = ".tar.gz"
    else:
        media_type = OCI_LAYER if oci else DOCKER_LAYER_TAR
        suffix = ".tar"
    path = directory / f"layer-{spec.key()}{suffix}"
    meta = path.with_name(path.name + ".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        return Layer(Descriptor(media_type, info["digest"], info["size"]), path=path, diff_id=info["diff_id"])
    tmp = path.with_name(path.name + ".partial")
    rng = random.Random(spec.seed)
    with tmp.open("wb") as raw:
        compressed = _HashingWriter(raw)
        gz = (
            gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=1)
            if spec.compress
            else None
        )
        uncompressed = _HashingWriter(gz if gz is not None else raw)
        with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            dirs: set[str] = set()
            for file in spec.file_list():
                parts = file.path.strip("/").split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent not in dirs:
                        dirs.add(parent)
                        tar.addfile(_tarinfo(parent + "/", 0, 0o755, tarfile.DIRTYPE))
                name = file.path.strip("/")
                if file.link is not None:
                    link = _tarinfo(name, 0, 0o777, tarfile.SYMTYPE)
                    link.linkname = file.link
                    tar.addfile(link)
                elif file.data is not None:
                    tar.addfile(_tarinfo(name, len(file.data), file.mode), io.BytesIO(file.data))
                else:
                    tar.addfile(_tarinfo(name, file.size, file.mode), _RandomReader(rng, file.size))
        if gz is not None:
            gz.close()
    diff_id = uncompressed.digest
    digest, size = (compressed.digest, compressed.size) if spec.compress else (diff_id, uncompressed.size)
    tmp.rename(path)
    meta.write_text(json.dumps({"digest": digest, "size": size, "diff_id": diff_id}))
    return Layer(Descriptor(media_type, digest, size), path=path, diff_id=diff_id)


def _tarinfo(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.type = kind
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_image(
    directory: Path,
    layers: Sequence[LayerSpec],
    *,
    platform: Platform = AMD64,
    oci: bool = True,
    annotations: dict[str, str] | None = None,
    run_config: dict[str, Any] | None = None,
) -> Image:
    """A single-platform image: the layers, a config with their diff_ids, and the manifest. ``run_config``
    replaces keys of the config's ``config`` object (``Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir``, ``User``)."""
    built = tuple(build_layer(directory, spec, oci=oci) for spec in layers)
    config_doc: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            **(run_config or {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"test layer {i}"} for i in range(len(built))
        ],
    }
    if platform.variant:
        config_doc["variant"] = platform.variant
    config = _json_blob(config_doc, OCI_CONFIG if oci else DOCKER_CONFIG)
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": config.descriptor.to_oci(),
        "layers": [layer.descriptor.to_oci() for layer in built],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    manifest = _json_blob(manifest_doc, manifest_doc["mediaType"])
    return Image(platform, config, built, manifest)


def build_index(
    directory: Path,
    layers: Sequence[LayerSpec],
    *,
    platforms: Sequence[Platform] = (AMD64, ARM64),
    oci: bool = True,
    attestations: bool = False,
) -> ImageIndex:
    """A multi-platform image (OCI index or Docker manifest list); each platform gets its own layers.

    ``attestations``: add a buildx-style attestation manifest for each platform (see build_attestation).
    """
    images = []
    for i, platform in enumerate(platforms):
        specs = [LayerSpec(s.size_bytes, s.files, s.compress, s.seed + 7919 * i) for s in layers]
        images.append(build_image(directory, specs, platform=platform, oci=oci))
    extra = [build_attestation(image) for image in images] if attestations else []
    return index_of(images, oci=oci, attestations=extra)


def build_attestation(image: Image, *, predicate_type: str = SLSA_PROVENANCE) -> Image:
    """A buildx-style attestation manifest for ``image``: platform ``unknown/unknown``, one in-toto statement
    layer (``application/vnd.in-toto+json``) about the image manifest, an OCI config, and the index entry
    annotations ``vnd.docker.reference.type: attestation-manifest`` and ``vnd.docker.reference.digest``."""
    subject_hex = image.digest.split(":", 1)[1]
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [
            {"name": f"pkg:docker/test-image@v1?platform={image.platform}", "digest": {"sha256": subject_hex}}
        ],
        "predicate": {
            "builder": {"id": "tests.imagefactory"},
            "buildType": "https://mobyproject.org/buildkit@v1",
            "metadata": {"buildInvocationID": subject_hex[:32]},
        },
    }
    data = json.dumps(statement, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layer = Layer(
        Descriptor(IN_TOTO, digest, len(data), annotations={PREDICATE_TYPE_ANNOTATION: predicate_type}),
        data=data,
        diff_id=digest,  # not compressed
    )
    config = _json_blob(
        {
            "architecture": UNKNOWN.architecture,
            "os": UNKNOWN.os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest]},
        },
        OCI_CONFIG,
    )
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor.to_oci(),
        "layers": [layer.descriptor.to_oci()],
    }
    manifest = _json_blob(manifest_doc, OCI_MANIFEST)
    annotations = {REFERENCE_TYPE_ANNOTATION: ATTESTATION_MANIFEST, REFERENCE_DIGEST_ANNOTATION: image.digest}
    return Image(UNKNOWN, config, (layer,), manifest, index_annotations=annotations)


def index_of(images: Sequence[Image], *, oci: bool = True, attestations: Sequence[Image] = ()) -> ImageIndex:
    """An OCI index (or Docker manifest list) of already built single-platform images, followed by
    ``attestations`` (from build_attestation)."""
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    index_doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.platform_descriptor().to_oci() for image in (*images, *attestations)],
    }
    return ImageIndex(tuple(images), _json_blob(index_doc, media_type), tuple(attestations))


# Pushing ----------------------------------------------------------------------------------------------
def push_image(
    client: RegistryClient,
    ref: Reference,
    image: Image | ImageIndex,
    *,
    chunked: bool = False,
    chunk_size: int = 1 << 20,
    tag: str | None = None,
) -> str:
    """Push blobs, then manifests (by digest), then the top manifest/index under the tag; returns its digest.

    The tag is ``tag``, else ``ref.tag``, else ``latest``. ``chunked`` uses PATCH uploads of ``chunk_size``.
    """
    tag = tag or ref.tag or "latest"
    size = chunk_size if chunked else None
    images = image.manifests if isinstance(image, ImageIndex) else (image,)
    for img in images:
        for blob in img.blobs:
            client.push_blob(ref, blob.descriptor, blob.source(), chunk_size=size)
    if isinstance(image, ImageIndex):
        for img in images:
            client.put_manifest(ref, img.digest, img.manifest.read_bytes(), img.media_type)
        top = image.index
    else:
        top = image.manifest
    return client.put_manifest(ref, tag, top.read_bytes(), top.descriptor.media_type)


# Docker schema 1 ------------------------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _libtrust_key_id(der_public_key: bytes) -> str:
    """libtrust's key id: base32 of the first 240 bits of SHA-256(DER public key), in groups of 4."""
    encoded = base64.b32encode(hashlib.sha256(der_public_key).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def schema1_manifest(name: str, tag: str, layer: Layer, *, architecture: str = "amd64") -> bytes:
    """A signed Docker schema 1 manifest (``...manifest.v1+prettyjws``) with one layer.

    The JWS signature is made with a fresh P-256 key the way libtrust does it: the signed payload is the
    manifest without ``signatures``, described by ``formatLength``/``formatTail`` in the protected header.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    v1 = {
        "id": hashlib.sha256(layer.digest.encode()).hexdigest(),
        "created": "1970-01-01T00:00:00Z",
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
    }
    document = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": architecture,
        "fsLayers": [{"blobSum": layer.digest}],
        "history": [{"v1Compatibility": json.dumps(v1, separators=(",", ":"))}],
    }
    payload = json.dumps(document, indent=3).encode()
    format_length = len(payload) - 2  # the payload ends with "\n}"
    format_tail = payload[format_length:]
    protected = _b64url(
        json.dumps(
            {
                "formatLength": format_length,
                "formatTail": _b64url(format_tail),
                "time": "2020-01-01T00:00:00Z",
            }
        ).encode()
    )
    key = ec.generate_private_key(ec.SECP256R1())
    signature_der = key.sign(f"{protected}.{_b64url(payload)}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(signature_der)
    numbers = key.public_key().public_numbers()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = {
        "crv": "P-256",
        "kid": _libtrust_key_id(der),
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    signatures = [
        {
            "header": {"jwk": jwk, "alg": "ES256"},
            "signature": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
            "protected": protected,
        }
    ]
    return payload[:format_length] + b',\n   "signatures": ' + json.dumps(signatures).encode() + format_tail


def push_schema1_image(
    client: RegistryClient, ref: Reference, directory: Path, *, tag: str = "schema1"
) -> str:
    """Push a one-layer schema 1 image (the registry must run with ``compatibility.schema1.enabled``).

    Returns the digest the registry stored it under.
    """
    layer = build_layer(directory, LayerSpec(4096, seed=101), oci=False)
    client.push_blob(ref, layer.descriptor, layer.source())
    body = schema1_manifest(ref.repository, tag, layer)
    return client.put_manifest(ref, tag, body, DOCKER_SCHEMA1_SIGNED)


__all__ = [
    "AMD64",
    "ARM64",
    "ARMV7",
    "ATTESTATION_MANIFEST",
    "IN_TOTO",
    "REFERENCE_DIGEST_ANNOTATION",
    "REFERENCE_TYPE_ANNOTATION",
    "S390X",
    "UNKNOWN",
    "Blob",
    "FileSpec",
    "Image",
    "ImageIndex",
    "Layer",
    "LayerSpec",
    "build_attestation",
    "build_image",
    "build_index",
    "build_layer",
    "index_of",
    "push_image",
    "push_schema1_image",
    "schema1_manifest",
]

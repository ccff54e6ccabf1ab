"""Data models shared by the registry client, the containerd client and the pipeline."""

from __future__ import annotations

import json
import platform as _platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from wrapper.core.errors import RegistryError, UsageError

if TYPE_CHECKING:  # reference.py validates digests with this module
    from wrapper.core.reference import Reference

# Media types -----------------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
SOCI_ZTOC = "application/octet-stream"
SOCI_LAYER_DIGEST_ANNOTATION = "com.amazon.soci.image-layer-digest"
SOCI_LAYER_MEDIATYPE_ANNOTATION = "com.amazon.soci.image-layer-mediaType"
SOCI_INDEX_DIGEST_ANNOTATION = "com.amazon.soci.index-digest"
SOCI_SPAN_SIZE_ANNOTATION = "com.amazon.soci.span-size"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)

# The Accept list for manifest requests: everything we can read, most specific first.
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def validate_digest(value: str) -> str:
    """Return ``value`` if it is a sha256 digest; raise UsageError with the reason otherwise."""
    if not _DIGEST_RE.match(value):
        raise UsageError(
            f"invalid digest {value!r}",
            hint="expected sha256: followed by 64 lowercase hex characters",
        )
    return value


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (e.g. ``linux/arm64/v8``)."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"invalid platform {text!r}", hint="use os/arch[/variant], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
            machine, machine
        )
        return cls("linux", arch, "")

    @classmethod
    def from_oci(cls, data: dict[str, Any]) -> Platform:
        return cls(str(data.get("os", "")), str(data.get("architecture", "")), str(data.get("variant", "")))

    def to_oci(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """True if ``other`` satisfies this platform (an empty variant matches any; arm64 implies v8)."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        mine, theirs = (
            _norm_variant(self.architecture, self.variant),
            _norm_variant(other.architecture, other.variant),
        )
        return not mine or not theirs or mine == theirs

    @property
    def is_unknown(self) -> bool:
        return self.os in ("", "unknown") or self.architecture in ("", "unknown")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# The hint of a malformed descriptor: the image (or index) was written by a broken tool.
_BAD_IMAGE = "the image's manifest is malformed; rebuild and push it with a current docker, buildx or crane"


def _excerpt(data: object) -> str:
    return json.dumps(data, default=str)[:120]


def _norm_variant(arch: str, variant: str) -> str:
    if arch == "arm64" and variant in ("", "v8"):
        return ""
    return variant


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None
    artifact_type: str = ""

    @classmethod
    def from_oci(cls, data: dict[str, Any]) -> Descriptor:
        """The descriptor of a JSON object; RegistryError when it is not one (no digest, no size)."""
        if not isinstance(data, dict):
            raise RegistryError(
                f"invalid content descriptor {_excerpt(data)}: not a JSON object", hint=_BAD_IMAGE
            )
        digest, size = data.get("digest"), data.get("size")
        if not isinstance(digest, str) or not digest:
            raise RegistryError(f"invalid content descriptor {_excerpt(data)}: no digest", hint=_BAD_IMAGE)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(
                f"invalid content descriptor {_excerpt(data)}: no valid size", hint=_BAD_IMAGE
            )
        plat = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=digest,
            size=size,
            annotations=dict(data.get("annotations") or {}),
            platform=Platform.from_oci(plat) if isinstance(plat, dict) else None,
            artifact_type=str(data.get("artifactType", "")),
        )

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_oci()
        return out

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def is_manifest(self) -> bool:
        return self.media_type in MANIFEST_TYPES


class PlatformChoice(Protocol):
    """Which platforms to resolve (``PullOptions`` is one)."""

    @property
    def platforms(self) -> Sequence[Platform]: ...

    @property
    def all_platforms(self) -> bool: ...


@dataclass
class PlatformImage:
    """One platform's manifest as pulled."""

    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layers: list[Descriptor]


@dataclass
class ResolvedImage:
    """What the registry says the image is: its top object and the manifests of every platform."""

    reference: Reference
    target: Descriptor
    index_body: bytes | None
    manifests: list[tuple[Descriptor, bytes]]  # every manifest of the image (all platforms), with its body
    all_platforms: list[Platform]
    selected: list[PlatformImage]
    # Blobs already read while resolving (a single-platform image's config), stored without a second GET.
    fetched: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.target.digest

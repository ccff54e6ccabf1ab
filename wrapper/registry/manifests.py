"""Manifests and indexes: read (checked against their digest), look up without downloading, write."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from wrapper.core.errors import RegistryError
from wrapper.core.models import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_TYPES,
    Descriptor,
    validate_digest,
)
from wrapper.core.reference import Reference
from wrapper.registry.httpio import discard, media_type
from wrapper.registry.transport import MAX_MANIFEST_BYTES, Transport

# Content types that do not say which kind of manifest a body is: the body does.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
# What to do about a manifest that is not one: the address is not a registry's, or something in between answers.
_NOT_A_MANIFEST_HINT = (
    "the registry, or a proxy in front of it, did not answer with a manifest; check the registry address "
    "and that it is a container registry"
)
_TOO_LARGE_HINT = "rebuild the image so that its manifest is smaller: fewer layers, shorter annotations"
_SCHEMA1_MESSAGE = (
    "{ref} uses Docker schema 1, which is not supported; rebuild/push it with a current Docker or buildx"
)


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry served it."""

    descriptor: Descriptor
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise RegistryError(
                f"manifest {self.descriptor.digest} is not a JSON object", hint=_NOT_A_MANIFEST_HINT
            )
        return data


def with_reference(ref: Reference, reference: str) -> str:
    """``registry/repository:tag`` or ``registry/repository@digest``, for messages."""
    sep = "@" if reference.startswith("sha256:") else ":"
    return f"{ref.registry}/{ref.repository}{sep}{reference}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get_manifest(transport: Transport, ref: Reference, reference: str | None = None) -> Manifest:
    """Fetch a manifest or index by tag or digest (default: ``ref.reference``)."""
    reference = reference or ref.reference
    target = with_reference(ref, reference)
    response, body = transport.get_small(
        transport.url(ref, f"manifests/{reference}"),
        ref=ref,
        headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        what=f"manifest {target}",
        too_large_hint=_TOO_LARGE_HINT,
    )
    if len(body) > MAX_MANIFEST_BYTES:
        raise RegistryError(
            f"manifest {target} is more than {MAX_MANIFEST_BYTES} bytes, over the 4 MiB limit",
            hint=_TOO_LARGE_HINT,
        )
    content_type = media_type(response.headers.get("Content-Type"))
    kind = manifest_media_type(target, content_type, body)
    digest = sha256(body)
    header_digest = response.headers.get("Docker-Content-Digest")
    if header_digest and header_digest != digest:
        raise RegistryError(
            f"{ref.registry} sent manifest {target} with digest {digest}, "
            f"but Docker-Content-Digest says {header_digest}"
        )
    if reference.startswith("sha256:") and reference != digest:
        raise RegistryError(f"{ref.registry} sent a manifest with digest {digest} for {target}")
    return Manifest(Descriptor(kind, digest, len(body)), body)


def head_manifest(transport: Transport, ref: Reference, reference: str | None = None) -> Descriptor | None:
    """The descriptor of a manifest (None if it does not exist), without downloading it if possible."""
    reference = reference or ref.reference
    target = with_reference(ref, reference)
    response = transport.request(
        "HEAD",
        transport.url(ref, f"manifests/{reference}"),
        ref=ref,
        headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        allow=(404,),
        what=f"manifest {target}",
    )
    discard(response)
    if response.status == 404:
        return None
    content_type = media_type(response.headers.get("Content-Type"))
    if content_type in SCHEMA1_TYPES:
        raise RegistryError(_SCHEMA1_MESSAGE.format(ref=target))
    digest = response.headers.get("Docker-Content-Digest")
    length = response.headers.get("Content-Length")
    if (
        not digest
        or not length
        or not length.isdigit()
        or content_type in _GENERIC_CONTENT_TYPES
        or (reference.startswith("sha256:") and digest != reference)
    ):
        return get_manifest(transport, ref, reference).descriptor
    return Descriptor(content_type, validate_digest(digest), int(length))


def put_manifest(transport: Transport, ref: Reference, reference: str, body: bytes, kind: str) -> str:
    """Upload a manifest of media type ``kind`` under a tag or its digest; returns its digest."""
    digest = sha256(body)
    if reference.startswith("sha256:") and reference != digest:
        raise ValueError(f"manifest body has digest {digest}, not {reference}")
    response = transport.request(
        "PUT",
        transport.url(ref, f"manifests/{reference}"),
        ref=ref,
        push=True,
        headers={"Content-Type": kind},
        body=body,
        what=f"manifest {with_reference(ref, reference)}",
    )
    discard(response)
    returned = response.headers.get("Docker-Content-Digest")
    if returned and kind in SCHEMA1_TYPES:
        # A signed schema 1 manifest's digest covers the payload without its signatures.
        return validate_digest(returned)
    if returned and returned != digest:
        raise RegistryError(f"{ref.registry} stored manifest {digest} as {returned}")
    return digest


def manifest_media_type(target: str, content_type: str, body: bytes) -> str:
    """The media type of a manifest body served with ``content_type``; schema 1 is refused."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError(f"manifest {target} is not valid JSON", hint=_NOT_A_MANIFEST_HINT) from None
    if not isinstance(doc, dict):
        raise RegistryError(f"manifest {target} is not a JSON object", hint=_NOT_A_MANIFEST_HINT)
    body_type = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else ""
    if content_type in SCHEMA1_TYPES or body_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise RegistryError(_SCHEMA1_MESSAGE.format(ref=target))
    if content_type not in _GENERIC_CONTENT_TYPES:
        return content_type
    if body_type:
        return str(body_type)
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc or "config" in doc:
        return OCI_MANIFEST
    raise RegistryError(
        f"cannot tell the media type of manifest {target}: no Content-Type, mediaType, layers or manifests",
        hint="push the image with a current docker, buildx or crane, which set its media type",
    )

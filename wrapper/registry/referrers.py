"""Referrers: the manifests whose ``subject`` is a given manifest, from the OCI referrers API, or from the
referrers tag ``sha256-<hex>`` on registries without it."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from wrapper.core.errors import NotFoundError, RegistryError
from wrapper.core.models import OCI_INDEX, Descriptor, validate_digest
from wrapper.core.reference import Reference
from wrapper.registry.manifests import get_manifest
from wrapper.registry.transport import MAX_MANIFEST_BYTES, Transport

log = logging.getLogger("wrapper.registry")


def get_referrers(
    transport: Transport, ref: Reference, subject_digest: str, artifact_type: str | None = None
) -> list[Descriptor]:
    """Descriptors of the manifests whose ``subject`` is ``subject_digest`` (of ``artifact_type`` if given)."""
    validate_digest(subject_digest)
    url = transport.url(ref, f"referrers/{subject_digest}")
    if artifact_type:
        url += "?" + urlencode({"artifactType": artifact_type})
    response, body = transport.get_small(
        url, ref=ref, headers={"Accept": OCI_INDEX}, allow=(404,), what=f"referrers of {subject_digest}"
    )
    data: Any
    if response.status == 404:
        tag = "sha256-" + subject_digest.split(":", 1)[1]
        log.debug("%s has no referrers API; reading the tag %s", ref.registry, tag)
        try:
            index = get_manifest(transport, ref, tag)
        except NotFoundError:
            return []
        data = index.json()
    else:
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"referrers list of {subject_digest} is over the 4 MiB limit")
        try:
            data = json.loads(body)
        except ValueError:
            raise RegistryError(f"{ref.registry} sent an unreadable referrers list") from None
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, list):
        return []
    out = [Descriptor.from_oci(m) for m in manifests if isinstance(m, dict) and "digest" in m]
    if artifact_type:
        out = [d for d in out if d.artifact_type == artifact_type]
    return out

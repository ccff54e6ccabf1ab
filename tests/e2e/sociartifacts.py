"""SOCI artifacts as a registry holds them, for the idempotency tests (pushed with the project's own client).

These are well-formed SOCI index manifests (v1: with ``subject``, listed under the ``sha256-<hex>`` referrers
tag; v2: inside an image index next to the annotated image manifest). Their zTOC blobs are placeholders:
the tests that use them check that soci-wrapper *finds* an index and does nothing, never what soci would
build (that is what the end-to-end tests with the real soci check).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.imagefactory import Image
from wrapper.core.models import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    SOCI_LAYER_MEDIATYPE_ANNOTATION,
    SOCI_ZTOC,
    Descriptor,
)
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_bytes(client: RegistryClient, ref: Reference, data: bytes, media_type: str) -> Descriptor:
    desc = Descriptor(media_type, _digest(data), len(data))
    client.push_blob(ref, desc, lambda: [data])
    return desc


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def soci_index_manifest(
    client: RegistryClient, ref: Reference, image: Image, version: str, *, subject: bool
) -> tuple[Descriptor, bytes]:
    """Push the config and one zTOC per layer >= 1 MiB, and return the SOCI index manifest (not yet pushed)."""
    artifact = SOCI_INDEX_V1 if version == "V1" else SOCI_INDEX_V2
    config = _push_bytes(client, ref, b"{}", artifact if version == "V1" else OCI_EMPTY)
    layers = []
    for layer in image.layers:
        if layer.size < 1 << 20:
            continue
        ztoc = _push_bytes(client, ref, b"ztoc for " + layer.digest.encode(), SOCI_ZTOC)
        layers.append(
            {
                **ztoc.to_oci(),
                "annotations": {
                    SOCI_LAYER_DIGEST_ANNOTATION: layer.digest,
                    SOCI_LAYER_MEDIATYPE_ANNOTATION: layer.descriptor.media_type,
                },
            }
        )
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact,
        "config": config.to_oci(),
        "layers": layers,
    }
    if subject:
        m = image.manifest.descriptor
        doc["subject"] = {"mediaType": m.media_type, "digest": m.digest, "size": m.size}
    body = _json(doc)
    return Descriptor(OCI_MANIFEST, _digest(body), len(body), artifact_type=artifact), body


def push_soci_v1(client: RegistryClient, ref: Reference, image: Image) -> str:
    """A SOCI index v1 for ``image`` and the referrers tag listing it (distribution 2.8 has no referrers API)."""
    desc, body = soci_index_manifest(client, ref, image, "V1", subject=True)
    client.put_manifest(ref, desc.digest, body, OCI_MANIFEST)
    referrers = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc.to_oci()]})
    client.put_manifest(ref, "sha256-" + image.digest.split(":", 1)[1], referrers, OCI_INDEX)
    return desc.digest


def push_soci_v2(client: RegistryClient, ref: Reference, image: Image, tag: str) -> tuple[str, str]:
    """A SOCI-enabled image at ``tag``: the annotated manifest and its SOCI index v2 in one image index.

    Returns (image index digest, SOCI index digest).
    """
    soci_desc, soci_body = soci_index_manifest(client, ref, image, "V2", subject=False)
    client.put_manifest(ref, soci_desc.digest, soci_body, OCI_MANIFEST)
    manifest = json.loads(image.manifest.read_bytes())
    manifest["mediaType"] = OCI_MANIFEST
    manifest["annotations"] = {SOCI_INDEX_DIGEST_ANNOTATION: soci_desc.digest}
    body = _json(manifest)
    annotated = Descriptor(
        OCI_MANIFEST,
        _digest(body),
        len(body),
        annotations={SOCI_INDEX_DIGEST_ANNOTATION: soci_desc.digest},
        platform=image.platform,
    )
    client.put_manifest(ref, annotated.digest, body, OCI_MANIFEST)
    soci_entry = Descriptor(
        OCI_MANIFEST, soci_desc.digest, soci_desc.size, platform=image.platform, artifact_type=SOCI_INDEX_V2
    )
    index = _json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [annotated.to_oci(), soci_entry.to_oci()]}
    )
    return client.put_manifest(ref, tag, index, OCI_INDEX), soci_desc.digest

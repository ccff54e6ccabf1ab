"""Idempotency: whether the registry already holds a SOCI index for every platform a run would index, and
whether the reference names one of soci-wrapper's own outputs (a SOCI index, a SOCI-enabled image), which an
event-driven deployment must not index again."""

from __future__ import annotations

import json

from wrapper.core.errors import NotFoundError
from wrapper.core.models import (
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    Descriptor,
    ResolvedImage,
)
from wrapper.core.reference import Reference
from wrapper.core.report import PlatformIndex, prefetch_layers
from wrapper.registry.client import Manifest, RegistryClient


def find_existing_indexes(
    registry: RegistryClient, image: ResolvedImage, soci_version: str, output_tag: str | None
) -> list[PlatformIndex] | None:
    """The SOCI indexes the registry already holds for every selected platform, or None if any is missing.

    V1: an index manifest whose subject is the platform's manifest (referrers API, or the ``sha256-<hex>``
    tag on registries without it). V2: ``--output-tag`` names an image index holding, for each platform, a
    manifest with the same config and layers annotated with a SOCI index that the image index also holds.
    """
    ref = image.reference
    found: list[PlatformIndex] = []
    if soci_version == "V1":
        for sel in image.selected:
            referrers = registry.get_referrers(ref, sel.manifest.digest, artifact_type=SOCI_INDEX_V1)
            if not referrers:
                return None
            found.append(PlatformIndex(str(sel.platform), sel.manifest.digest, referrers[-1].digest))
        return found

    assert output_tag
    try:
        output = registry.get_manifest(ref, output_tag)
    except NotFoundError:
        return None
    if not output.descriptor.is_index:
        return None
    entries = [Descriptor.from_oci(m) for m in json.loads(output.body).get("manifests", [])]
    soci_indexes = {e.digest for e in entries if e.artifact_type == SOCI_INDEX_V2}
    for sel in image.selected:
        match = None
        for entry in entries:
            index_digest = entry.annotations.get(SOCI_INDEX_DIGEST_ANNOTATION)
            if not entry.is_manifest or not entry.platform or not sel.platform.matches(entry.platform):
                continue
            if index_digest not in soci_indexes:
                continue
            doc = registry.get_manifest(ref, entry.digest).json()
            same_layers = [x["digest"] for x in doc.get("layers", [])] == [x.digest for x in sel.layers]
            if doc.get("config", {}).get("digest") == sel.config.digest and same_layers:
                match = PlatformIndex(str(sel.platform), entry.digest, str(index_digest))
                break
        if match is None:
            return None
        found.append(match)
    return found


def prefetch_of_indexes(
    registry: RegistryClient, ref: Reference, indexes: list[PlatformIndex]
) -> dict[str, dict[str, str]]:
    """The prefetch artifacts of each of ``indexes`` (SOCI index manifests in ``ref``'s repository): platform ->
    layer digest -> artifact digest.

    This is what a run with a prefetch list compares its own index with: the image counts as already indexed
    only if the index soci makes now, for the requested list and from the same zTOCs, carries the same
    prefetch artifacts for every platform (they are soci's deterministic JSON of the spans holding the listed
    files: the same artifacts mean the same spans fetched before each mount). An index made without a list,
    or with another one that selects other spans, is therefore not "already indexed"."""
    return {
        idx.platform: prefetch_layers(registry.get_manifest(ref, idx.soci_index_digest).json())
        for idx in indexes
    }


def soci_artifact(top: Manifest) -> str | None:
    """What ``top`` is when it is no image to index: ``a SOCI index`` (v1 or v2, by its artifact or config
    media type) or ``a SOCI-enabled image`` (an image index holding v2 SOCI indexes, or a manifest annotated
    with its SOCI index). None for an ordinary image."""
    try:
        doc = top.json()
    except (ValueError, NotFoundError):
        return None
    soci_types = (SOCI_INDEX_V1, SOCI_INDEX_V2)
    if top.descriptor.is_manifest:
        config_type = (doc.get("config") or {}).get("mediaType")
        if doc.get("artifactType") in soci_types or config_type in soci_types:
            return "a SOCI index"
        if SOCI_INDEX_DIGEST_ANNOTATION in (doc.get("annotations") or {}):
            return "a SOCI-enabled image"
    entries = doc.get("manifests", []) if top.descriptor.is_index else []
    if any(m.get("artifactType") == SOCI_INDEX_V2 for m in entries):
        return "a SOCI-enabled image"
    if entries and all(m.get("artifactType") in soci_types for m in entries):
        return "a list of SOCI indexes (a referrers tag)"
    return None

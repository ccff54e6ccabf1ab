"""Level 1, the registry: is the SOCI index there, found the way the SOCI snapshotter finds it, and whole?

For each platform, discovery mirrors soci-snapshotter v0.15.0 (``fs.findSociIndexDesc``): a v2 index is named
by the annotation ``com.amazon.soci.index-digest`` of the platform's manifest (read from the manifest itself);
a v1 index is the first referrer of artifact type ``application/vnd.amazon.soci.index.v1+json`` of the
platform's manifest (referrers API, or the ``sha256-<hex>`` tag on registries without it). Then the index
manifest is read (digest-checked) and checked: media types, ``subject`` (v1), its entry in the image index
(v2); every zTOC entry: annotated with a layer of this manifest, with that layer's media type and a span size;
its blob streamed to disk (bounded, digest- and size-checked) and decoded (``ztocfmt``): the layer size it
describes, its compression and its span size must agree with the layer and the annotations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.core.errors import NotFoundError, RegistryError, UsageError, WrapperError
from wrapper.core.models import (
    INDEX_TYPES,
    OCI_MANIFEST,
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    SOCI_LAYER_MEDIATYPE_ANNOTATION,
    SOCI_SPAN_SIZE_ANNOTATION,
    SOCI_ZTOC,
    Descriptor,
    Platform,
)
from wrapper.core.options import PullOptions
from wrapper.core.progress import human_size, short_digest
from wrapper.core.reference import Reference
from wrapper.core.util import one_line
from wrapper.image.resolve import select_platforms
from wrapper.registry.client import MAX_MANIFEST_BYTES, BlobReadError, RegistryClient
from wrapper.soci.existing import soci_artifact
from wrapper.soci.reuse import MAX_ZTOC_BYTES
from wrapper.verify.report import LayerResult, PlatformResult
from wrapper.verify.ztocfmt import ZtocFacts, ZtocFormatError, read_ztoc

log = logging.getLogger("wrapper.verify")

SOCI_PREFETCH = "application/vnd.amazon.soci.prefetch.v1+json"
IMAGE_MANIFEST_ANNOTATION = (
    "com.amazon.soci.image-manifest-digest"  # on a v2 index's entry in the image index
)
_BLOB_ATTEMPTS = 4


@dataclass
class Target:
    """One platform to verify: its manifest as the registry holds it, and what the checks learn."""

    platform: Platform
    manifest: Descriptor
    body: bytes
    config: Descriptor
    layers: list[Descriptor]
    result: PlatformResult
    index_doc: dict[str, Any] | None = None
    # zTOCs whose blob is there and decodes: zTOC digest -> (the layer it is annotated with, its file, its facts)
    ztocs: dict[str, tuple[Descriptor, Path, ZtocFacts]] = field(default_factory=dict)


@dataclass
class Image:
    """The image named by IMAGE_REF: its top object and the platforms selected for verification."""

    reference: Reference
    top: Descriptor
    top_body: bytes
    targets: list[Target]

    @property
    def index_entries(self) -> list[Descriptor]:
        if self.top.media_type not in INDEX_TYPES:
            return []
        return [Descriptor.from_oci(m) for m in json.loads(self.top_body).get("manifests", [])]


def resolve(
    registry: RegistryClient, ref: Reference, platforms: tuple[Platform, ...], all_platforms: bool
) -> Image:
    """The image and its selected platforms' manifests (attestations and SOCI indexes are not platforms)."""
    top = registry.get_manifest(ref)
    kind = soci_artifact(top)
    if kind in ("a SOCI index", "a list of SOCI indexes (a referrers tag)"):
        raise UsageError(
            f"{ref} is {kind}, not an image", hint="name the image (or the SOCI-enabled image) it belongs to"
        )
    options = PullOptions(platforms=platforms, all_platforms=all_platforms)
    targets: list[Target] = []
    if top.descriptor.is_index:
        entries = [Descriptor.from_oci(m) for m in top.json().get("manifests", [])]
        images = [
            e for e in entries if e.is_manifest and e.artifact_type not in (SOCI_INDEX_V1, SOCI_INDEX_V2)
        ]
        available = [e.platform or Platform("unknown", "unknown") for e in images]
        chosen = select_platforms(available, options)
        for want in chosen:
            entry = next(e for e, p in zip(images, available, strict=True) if p == want)
            manifest = registry.get_manifest(ref, entry.digest)
            descriptor = Descriptor(entry.media_type, entry.digest, entry.size, dict(entry.annotations), want)
            targets.append(_target(want, descriptor, manifest.body))
    elif top.descriptor.is_manifest:
        doc = top.json()
        config = Descriptor.from_oci(doc["config"])
        plat = Platform.from_oci(json.loads(read_small(registry, ref, config)))
        select_platforms([plat], options)  # NotFoundError naming both when it is not the one asked for
        targets.append(_target(plat, top.descriptor, top.body))
    else:
        raise RegistryError(f"{ref} is a {top.descriptor.media_type or 'untyped'} object, not an image")
    return Image(ref, top.descriptor, top.body, targets)


def _target(platform: Platform, manifest: Descriptor, body: bytes) -> Target:
    doc = json.loads(body)
    layers = [Descriptor.from_oci(x) for x in doc.get("layers", [])]
    result = PlatformResult(
        str(platform),
        manifest.digest,
        manifest_media_type=manifest.media_type,
        manifest_size=manifest.size,
        layers=[LayerResult(x.digest, x.size, x.media_type) for x in layers],
    )
    return Target(platform, manifest, body, Descriptor.from_oci(doc["config"]), layers, result)


# -- discovery ---------------------------------------------------------------------------------------------
def discover(registry: RegistryClient, image: Image, target: Target, soci_version: str) -> Descriptor | None:
    """The SOCI index the snapshotter would use for ``target`` (recorded in its result), or None."""
    ref, result = image.reference, target.result
    annotations = json.loads(target.body).get("annotations") or {}
    v2_digest = annotations.get(SOCI_INDEX_DIGEST_ANNOTATION)
    v1: list[Descriptor] = []
    if soci_version in ("V1", "auto") and not (soci_version == "auto" and v2_digest):
        v1 = registry.get_referrers(ref, target.manifest.digest, artifact_type=SOCI_INDEX_V1)
    if v2_digest and soci_version in ("V2", "auto"):
        result.soci_version = "V2"
        result.discovered_via = "manifest annotation"
        entry_note = target.manifest.annotations.get(SOCI_INDEX_DIGEST_ANNOTATION)
        if entry_note is not None and entry_note != v2_digest:
            result.add(
                "registry",
                "discovery",
                False,
                f"the image index entry names SOCI index {entry_note}, the manifest itself {v2_digest} "
                "(the snapshotter reads the manifest's)",
            )
        result.index_digest = str(v2_digest)
        result.add(
            "registry", "discovery", True, f"named by the manifest annotation {SOCI_INDEX_DIGEST_ANNOTATION}"
        )
        return Descriptor(OCI_MANIFEST, str(v2_digest), 0, artifact_type=SOCI_INDEX_V2)
    if v1:
        first = v1[0]
        tag = "sha256-" + target.manifest.digest.split(":", 1)[1]
        via = "referrers tag " + tag if registry.head_manifest(ref, tag) is not None else "referrers API"
        result.soci_version = "V1"
        result.discovered_via = via
        result.index_digest = first.digest
        more = (
            f" ({len(v1)} SOCI v1 indexes refer to it; the snapshotter takes the first)"
            if len(v1) > 1
            else ""
        )
        result.add("registry", "discovery", True, f"found through the {via}{more}")
        return first
    hint = ""
    if soci_version == "V1" and v2_digest:
        hint = f"; its manifest names a SOCI v2 index ({v2_digest}): use --soci-version V2 or auto"
    elif soci_version == "V2":
        other = registry.get_referrers(ref, target.manifest.digest, artifact_type=SOCI_INDEX_V1)
        if other:
            hint = f"; it has a SOCI v1 index ({other[0].digest}): use --soci-version V1 or auto"
        else:
            hint = "; a SOCI v2 index lives in a SOCI-enabled image (the --output-tag of `index --soci-version V2`)"
    wanted = {"V1": "SOCI v1 index", "V2": "SOCI v2 index"}.get(soci_version, "SOCI index")
    result.discovered_via = None
    log.debug("%s: no %s%s", target.platform, wanted, hint)
    result.add(
        "registry", "discovery", False, f"no {wanted} found for manifest {target.manifest.digest}{hint}"
    )
    return None


# -- the index manifest --------------------------------------------------------------------------------------
def check_index(
    registry: RegistryClient, image: Image, target: Target, found: Descriptor, work: Path
) -> None:
    """Every registry-level check of ``target``'s SOCI index (``found``); zTOC files land in ``work``."""
    ref, result = image.reference, target.result
    version = result.soci_version or "V1"
    artifact = SOCI_INDEX_V1 if version == "V1" else SOCI_INDEX_V2
    if version == "V2" and image.top.media_type in INDEX_TYPES:
        listed = [e for e in image.index_entries if e.digest == found.digest]
        if not listed:
            result.add(
                "registry",
                "v2-image-index",
                False,
                f"the manifest names SOCI index {found.digest}, which the image index does not list",
            )
        else:
            entry = listed[0]
            entry_problems: list[str] = []
            if entry.artifact_type != SOCI_INDEX_V2:
                entry_problems.append(f"its entry's artifactType is {entry.artifact_type or 'missing'}")
            named = entry.annotations.get(IMAGE_MANIFEST_ANNOTATION)
            if named and named != target.manifest.digest:
                entry_problems.append(f"its entry's {IMAGE_MANIFEST_ANNOTATION} is {named}")
            if entry.platform is not None and not target.platform.matches(entry.platform):
                entry_problems.append(f"its entry's platform is {entry.platform}")
            result.add(
                "registry",
                "v2-image-index",
                not entry_problems,
                "; ".join(f"SOCI index {found.digest}: {p}" for p in entry_problems)
                or "listed in the image index as a SOCI v2 index of this manifest",
            )
    try:
        manifest = registry.get_manifest(ref, found.digest)
        doc = manifest.json()
    except NotFoundError:
        result.add("registry", "index-manifest", False, f"SOCI index {found.digest} is not in the registry")
        return
    except (WrapperError, ValueError) as exc:
        result.add("registry", "index-manifest", False, f"SOCI index {found.digest} cannot be read: {exc}")
        return
    target.index_doc = doc
    problems: list[str] = []
    if manifest.descriptor.media_type != OCI_MANIFEST or doc.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        problems.append(f"media type {manifest.descriptor.media_type}, not {OCI_MANIFEST}")
    if doc.get("artifactType") not in (None, artifact):
        problems.append(f"artifactType {doc.get('artifactType')}, not {artifact}")
    if found.artifact_type and found.artifact_type != artifact:
        problems.append(f"listed with artifactType {found.artifact_type}, not {artifact}")
    config = doc.get("config") or {}
    if config.get("mediaType") != artifact:
        problems.append(f"config media type {config.get('mediaType')}, not {artifact}")
    elif not _config_present(registry, ref, config):
        problems.append(f"its config blob {config.get('digest')} is missing")
    result.add(
        "registry",
        "index-media-types",
        not problems,
        "; ".join(f"SOCI index {found.digest}: {p}" for p in problems)
        or f"SOCI index manifest {version}: media types and config as soci writes them",
    )
    subject = doc.get("subject")
    if version == "V1":
        subject_digest = subject.get("digest") if isinstance(subject, dict) else None
        ok = subject_digest == target.manifest.digest
        result.add(
            "registry",
            "subject",
            ok,
            f"subject is this platform's manifest {target.manifest.digest}"
            if ok
            else f"SOCI index {found.digest} has subject {subject_digest or '(none)'}, "
            f"not this platform's manifest {target.manifest.digest}",
        )
    _check_ztocs(registry, image, target, doc, work)


def _config_present(registry: RegistryClient, ref: Reference, config: dict[str, Any]) -> bool:
    digest = config.get("digest")
    if not isinstance(digest, str):
        return False
    try:
        return registry.blob_exists(ref, digest)
    except WrapperError:
        return False


def _check_ztocs(
    registry: RegistryClient, image: Image, target: Target, doc: dict[str, Any], work: Path
) -> None:
    result = target.result
    by_digest = {x.digest: x for x in target.layers}
    seen: dict[str, str] = {}
    entries = doc.get("layers")
    if not isinstance(entries, list) or not entries:
        result.add("registry", "ztocs", False, f"SOCI index {result.index_digest} lists no zTOC")
        return
    for raw in entries:
        try:
            entry = Descriptor.from_oci(raw)
        except WrapperError as exc:
            result.add("registry", "ztocs", False, f"SOCI index {result.index_digest}: {exc.message}")
            continue
        if entry.media_type == SOCI_PREFETCH:
            continue  # prefetch artifacts: not zTOCs, nothing to check here
        layer_digest = entry.annotations.get(SOCI_LAYER_DIGEST_ANNOTATION)
        layer = by_digest.get(layer_digest or "")
        if layer is None:
            result.add(
                "registry",
                "ztoc-layer",
                False,
                f"zTOC {entry.digest} is annotated with layer {layer_digest or '(none)'}, "
                "which is not a layer of this manifest",
            )
            continue
        report = result.layer(layer.digest)
        assert report is not None
        if layer.digest in seen:
            report.add(
                "registry",
                "ztoc-layer",
                False,
                f"two zTOCs for this layer: {seen[layer.digest]}, {entry.digest}",
            )
            continue
        seen[layer.digest] = entry.digest
        report.ztoc, report.ztoc_size = entry.digest, entry.size
        if entry.media_type != SOCI_ZTOC:
            report.add(
                "registry",
                "ztoc-media-type",
                False,
                f"zTOC {entry.digest} has media type {entry.media_type}; the snapshotter only uses "
                f"{SOCI_ZTOC} entries, so this layer would not be loaded lazily",
            )
            continue
        facts = _check_annotations_and_blob(registry, image.reference, entry, layer, report, work)
        if facts is not None:
            target.ztocs[entry.digest] = (layer, work / entry.digest.split(":", 1)[1], facts)
    for layer in target.layers:
        report = result.layer(layer.digest)
        assert report is not None
        if not report.covered:
            report.covered_reason = _not_covered_reason(layer)


def _not_covered_reason(layer: Descriptor) -> str:
    if "zstd" in layer.media_type:
        return "no zTOC (zstd, which soci v0.15.0 cannot index): pulled whole"
    return "no zTOC (soci skips layers under its --min-layer-size): pulled whole"


def _check_annotations_and_blob(
    registry: RegistryClient,
    ref: Reference,
    entry: Descriptor,
    layer: Descriptor,
    report: LayerResult,
    work: Path,
) -> ZtocFacts | None:
    name = f"zTOC {entry.digest}"
    annotated_type = entry.annotations.get(SOCI_LAYER_MEDIATYPE_ANNOTATION)
    report.add(
        "registry",
        "layer-media-type",
        annotated_type == layer.media_type,
        f"{name} is annotated with the layer's media type {layer.media_type}"
        if annotated_type == layer.media_type
        else f"{name} is annotated with media type {annotated_type or '(none)'}, the layer is {layer.media_type}",
    )
    span_text = entry.annotations.get(SOCI_SPAN_SIZE_ANNOTATION)
    span: int | None = None
    if span_text is not None:
        try:
            span = int(span_text)
        except ValueError:
            span = None
        if span is None or span <= 0:
            report.add(
                "registry", "span-size", False, f"{name} has span-size annotation {span_text!r}, not a size"
            )
            span = None
    report.span_size = span
    path = work / entry.digest.split(":", 1)[1]
    problem = fetch_verified(registry, ref, entry, path)
    if problem is not None:
        report.add("registry", "ztoc-blob", False, f"{name}: {problem}")
        return None
    report.add("registry", "ztoc-blob", True, f"{name}: {entry.size} bytes, digest verified")
    try:
        with open(path, "rb") as fh:
            facts = read_ztoc(fh.read())
    except ZtocFormatError as exc:
        report.add("registry", "ztoc-format", False, f"{name} cannot be decoded: {exc}")
        return None
    report.add(
        "registry",
        "ztoc-format",
        True,
        f"{name}: zTOC {facts.version} by {facts.build_tool or 'an unknown tool'}, {facts.files} entries, "
        f"{facts.spans} span{'s' if facts.spans != 1 else ''}",
    )
    describes = facts.compressed_size == layer.size
    report.add(
        "registry",
        "ztoc-describes-layer",
        describes,
        f"{name} describes a layer of {layer.size} bytes"
        if describes
        else f"{name} describes a layer of {facts.compressed_size} bytes, this layer has {layer.size}: "
        "it is the zTOC of another layer",
    )
    if (facts.algorithm == "gzip") != ("gzip" in layer.media_type):
        report.add(
            "registry",
            "ztoc-compression",
            False,
            f"{name} is for a {facts.algorithm} layer, the layer's media type is {layer.media_type}",
        )
    if span is not None:
        agree = span == facts.span_size
        report.add(
            "registry",
            "span-size",
            agree,
            f"span-size annotation {span} matches the zTOC"
            if agree
            else f"{name}: its span-size annotation says {span}, the zTOC was built with span size "
            f"{facts.span_size}",
        )
    # A zTOC that is there and decodes goes on to the content level even when it disagrees with its
    # annotations: soci's own reading of it shows what the disagreement does.
    return facts


def fetch_verified(registry: RegistryClient, ref: Reference, entry: Descriptor, dest: Path) -> str | None:
    """Stream blob ``entry`` into ``dest``, checking size and digest as it comes; None, or what is wrong."""
    if entry.size > MAX_ZTOC_BYTES:
        return (
            f"its descriptor says {entry.size} bytes, over the {human_size(MAX_ZTOC_BYTES)} limit for a zTOC"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    hasher, written = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            for chunk in _blob_chunks(registry, ref, entry.digest, limit=entry.size):
                written += len(chunk)
                if written > entry.size:
                    return f"the registry served more than the {entry.size} bytes its descriptor says"
                hasher.update(chunk)
                out.write(chunk)
    except NotFoundError:
        dest.unlink(missing_ok=True)
        return f"the blob is not in {ref.registry}/{ref.repository}"
    except WrapperError as exc:
        dest.unlink(missing_ok=True)
        return f"cannot be downloaded: {one_line(exc.message)}"
    actual = "sha256:" + hasher.hexdigest()
    if written != entry.size:
        return f"the registry served {written} bytes, its descriptor says {entry.size}"
    if actual != entry.digest:
        return f"the registry served content with digest {actual}"
    os.chmod(dest, 0o644)
    return None


def _blob_chunks(
    registry: RegistryClient, ref: Reference, digest: str, *, limit: int | None = None
) -> Iterator[bytes]:
    """A blob's bytes, resuming where a broken transfer stopped (a few times); stops past ``limit`` + 1."""
    position, attempts = 0, 0
    while True:
        try:
            with registry.open_blob(ref, digest, offset=position) as stream:
                for chunk in stream:
                    position += len(chunk)
                    yield chunk
                    if limit is not None and position > limit:
                        return
            return
        except BlobReadError as exc:
            attempts += 1
            if attempts >= _BLOB_ATTEMPTS:
                raise RegistryError(f"{exc.message} (gave up after {attempts} attempts)") from None
            position = exc.position


def layer_chunks(registry: RegistryClient, ref: Reference, digest: str) -> Iterator[bytes]:
    """A layer's bytes as the registry serves them (resumed on broken transfers)."""
    return _blob_chunks(registry, ref, digest)


def read_small(registry: RegistryClient, ref: Reference, desc: Descriptor) -> bytes:
    if desc.size > MAX_MANIFEST_BYTES:
        raise RegistryError(f"{desc.digest} is implausibly large ({desc.size} bytes)")
    data = b"".join(_blob_chunks(registry, ref, desc.digest, limit=MAX_MANIFEST_BYTES))
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise RegistryError(f"{ref.registry} served {desc.digest} with the wrong content")
    return data


def run_registry_level(registry: RegistryClient, image: Image, soci_version: str, work: Path) -> None:
    """Discovery and the index checks for every target (their results are filled in)."""
    for target in image.targets:
        found = discover(registry, image, target, soci_version)
        if found is None:
            continue
        check_index(registry, image, target, found, work)
        covered = sum(1 for x in target.result.layers if x.covered)
        log.debug("%s: %d of %d layers covered", target.platform, covered, len(target.layers))


def short(digest: str) -> str:
    return short_digest(digest)

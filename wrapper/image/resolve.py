"""What an image is, from the registry: its top manifest or index, every platform's manifest, the platforms
chosen. Nothing is stored here; ``wrapper.image.pull`` transfers what this finds.

The documents are checked as they are read: an index must carry a list of manifest descriptors, an image
manifest a config descriptor (and, if any, a list of layer descriptors). A document that is neither an image
manifest nor an index, or a malformed one, is a RegistryError with what to do, not an internal error later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from wrapper.core.errors import NotFoundError, RegistryError
from wrapper.core.models import Descriptor, Platform, PlatformChoice, PlatformImage, ResolvedImage
from wrapper.core.reference import Reference
from wrapper.registry.client import MAX_MANIFEST_BYTES, RegistryClient

# The hint of a manifest or index that is not what the image spec says: the tool that wrote it is broken.
_MALFORMED_HINT = (
    "the image's manifest is malformed; rebuild and push it with a current docker, buildx or crane"
)
_UNKNOWN = Platform("unknown", "unknown")


def select_platforms(available: Sequence[Platform], options: PlatformChoice) -> list[Platform]:
    """The platforms of ``available`` to pull; NotFoundError naming both sides when one is missing."""
    real = [p for p in available if not p.is_unknown]
    if options.all_platforms:
        return real
    wanted = list(options.platforms) or [Platform.host()]
    chosen: list[Platform] = []
    for want in wanted:
        match = next((p for p in real if want.matches(p)), None)
        if match is None:
            have = ", ".join(str(p) for p in real) or "none"
            raise NotFoundError(
                f"the image has no {want} variant; it has {have}",
                hint="choose one with --platform, or use --all-platforms",
            )
        if match not in chosen:
            chosen.append(match)
    return chosen


def resolve_image(registry: RegistryClient, ref: Reference, options: PlatformChoice) -> ResolvedImage:
    """Fetch the image's manifest (and, for an index, every platform's manifest); choose the platforms."""
    top = registry.get_manifest(ref)
    manifests: list[tuple[Descriptor, bytes]] = []
    selected: list[PlatformImage] = []
    if top.descriptor.is_index:
        entries = [e for e in index_entries(str(ref), top.body) if e.is_manifest]
        all_platforms = [e.platform or _UNKNOWN for e in entries]
        chosen = select_platforms(all_platforms, options)
        for entry in entries:
            body = registry.get_manifest(ref, entry.digest).body
            image = platform_image(entry.platform or _UNKNOWN, entry, body, f"{ref} ({entry.digest})")
            manifests.append((entry, body))
            if image.platform in chosen and not any(s.platform == image.platform for s in selected):
                selected.append(image)
        return ResolvedImage(ref, top.descriptor, top.body, manifests, all_platforms, selected)
    if top.descriptor.is_manifest:
        config = manifest_config(str(ref), top.body)
        config_body = read_config(registry, ref, config)
        plat = config_platform(config, config_body)
        select_platforms([plat], options)  # raises if the image's one platform does not match
        image = platform_image(plat, top.descriptor, top.body, str(ref))
        return ResolvedImage(
            ref,
            top.descriptor,
            None,
            [(top.descriptor, top.body)],
            [plat],
            [image],
            {config.digest: config_body},
        )
    raise RegistryError(
        f"{ref} has media type {top.descriptor.media_type or '(none)'} and is not an image",
        hint="point at a container image: an OCI or Docker image manifest, or an index of them",
    )


def index_entries(target: str, body: bytes) -> list[Descriptor]:
    """The descriptors of an index's ``manifests`` (RegistryError when it has no such list)."""
    manifests = _document(target, body).get("manifests")
    if not isinstance(manifests, list):
        raise RegistryError(
            f"the index {target} has no list of manifests{_found('manifests', manifests)}",
            hint=_MALFORMED_HINT,
        )
    return [Descriptor.from_oci(m) for m in manifests]


def manifest_config(target: str, body: bytes) -> Descriptor:
    """The config descriptor of an image manifest (RegistryError when it has none)."""
    config = _document(target, body).get("config")
    if not isinstance(config, dict):
        raise RegistryError(
            f"the manifest of {target} has no config descriptor{_found('config', config)}, so it is not an image",
            hint=_MALFORMED_HINT,
        )
    return Descriptor.from_oci(config)


def manifest_layers(target: str, body: bytes) -> list[Descriptor]:
    """The layer descriptors of an image manifest (none when it has no ``layers``)."""
    layers = _document(target, body).get("layers", [])
    if not isinstance(layers, list):
        raise RegistryError(
            f"the manifest of {target} has no list of layers{_found('layers', layers)}",
            hint=_MALFORMED_HINT,
        )
    return [Descriptor.from_oci(layer) for layer in layers]


def platform_image(plat: Platform, desc: Descriptor, body: bytes, target: str) -> PlatformImage:
    """One platform's image from its manifest ``body`` (checked: a config, and layers if any)."""
    return PlatformImage(
        platform=plat,
        manifest=desc,
        config=manifest_config(target, body),
        layers=manifest_layers(target, body),
    )


def read_config(registry: RegistryClient, ref: Reference, config: Descriptor) -> bytes:
    """The config, whole and checked against its digest (a broken transfer resumed): it is stored as read."""
    if config.size > MAX_MANIFEST_BYTES:
        raise RegistryError(
            f"the image config {config.digest} is implausibly large ({config.size} bytes)",
            hint=_MALFORMED_HINT,
        )
    return registry.read_blob(ref, config.digest, max_bytes=MAX_MANIFEST_BYTES)


def config_platform(config: Descriptor, data: bytes) -> Platform:
    """The platform an image config names (``os``, ``architecture``, ``variant``)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"the image config {config.digest} is not JSON", hint=_MALFORMED_HINT) from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"the image config {config.digest} is not a JSON object", hint=_MALFORMED_HINT)
    return Platform(str(doc.get("os", "")), str(doc.get("architecture", "")), str(doc.get("variant", "")))


def _document(target: str, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError(f"the manifest of {target} is not valid JSON", hint=_MALFORMED_HINT) from None
    if not isinstance(doc, dict):
        raise RegistryError(f"the manifest of {target} is not a JSON object", hint=_MALFORMED_HINT)
    return doc


def _found(name: str, value: object) -> str:
    """`` ('NAME' is a string)``: what a JSON field of the wrong kind holds, for messages; nothing if absent."""
    if value is None:
        return ""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return f" ('{name}' is {kinds.get(type(value), 'a number')})"

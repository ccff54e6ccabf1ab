"""The SOCI-enabled image ``soci convert`` makes (index manifest v2), made ready to push.

soci-wrapper runs ``soci convert`` with soci's own content store, like ``soci create`` (there, and only there,
``soci rebuild-db`` can hand it reused zTOCs). Convert writes everything it makes into that store: the zTOCs,
the SOCI indexes, the rewritten platform manifests and the new image index; the image record it creates in
containerd points at that index. ``bring_into_containerd`` copies what the push needs from soci's store into
containerd's (small blobs: manifests and zTOCs), so the project's own push (wrapper.image.push) reads one store.

Convert also drops what it does not know of the original index: the annotations of buildx attestation
manifests (``vnd.docker.reference.type`` / ``.digest``), whose reference would anyway name a manifest digest
convert changed. ``restore_attestations`` puts them back, pointing at the rewritten manifests.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import Image, gc_labels
from wrapper.core.models import Descriptor, Platform
from wrapper.soci.runner import Soci

REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"


def restore_attestations(original_index: bytes | None, converted_index: bytes) -> bytes | None:
    """``converted_index`` with the attestation annotations of ``original_index`` put back, each pointing at
    the rewritten manifest of the platform it attested; None when there is nothing to restore."""
    if original_index is None:
        return None
    original = json.loads(original_index).get("manifests", [])
    converted = json.loads(converted_index)
    by_digest = {m["digest"]: m for m in original}
    # old platform manifest digest -> new one, matched by platform
    renamed: dict[str, str] = {}
    new_by_platform = {
        _platform_key(m): m["digest"]
        for m in converted.get("manifests", [])
        if m.get("platform") and not m.get("artifactType")
    }
    for old in original:
        if old.get("platform") and REFERENCE_TYPE not in (old.get("annotations") or {}):
            new = new_by_platform.get(_platform_key(old))
            if new is not None:
                renamed[old["digest"]] = new
    changed = False
    for entry in converted.get("manifests", []):
        before = by_digest.get(entry["digest"])
        notes = (before or {}).get("annotations") or {}
        if REFERENCE_TYPE not in notes or (entry.get("annotations") or {}).get(REFERENCE_TYPE):
            continue
        restored = dict(notes)
        if notes.get(REFERENCE_DIGEST) in renamed:
            restored[REFERENCE_DIGEST] = renamed[notes[REFERENCE_DIGEST]]
        entry["annotations"] = {**(entry.get("annotations") or {}), **restored}
        changed = True
    return json.dumps(converted, separators=(",", ":")).encode() if changed else None


def _platform_key(entry: dict[str, Any]) -> str:
    return str(Platform.from_oci(entry["platform"]))


def bring_into_containerd(
    soci: Soci, client: ContainerdClient, image_name: str, top_body: bytes | None
) -> Descriptor:
    """Copy image record ``image_name``'s new content (what convert wrote to soci's store) into containerd,
    with ``top_body`` as its image index if given (else convert's); returns the record's target. Call inside a
    lease: the record references everything, through GC labels, once it is updated."""
    record = client.images.get(image_name)
    target = record.target
    body = top_body if top_body is not None else soci.read_blob(target.digest)
    if top_body is not None:
        target = Descriptor(target.media_type, _digest(body), len(body))
    for entry in json.loads(body).get("manifests", []):
        desc = Descriptor.from_oci(entry)
        if client.content.exists(desc.digest):
            continue  # a platform convert did not touch (already pulled)
        manifest = soci.read_blob(desc.digest)
        doc = json.loads(manifest)
        for blob in [doc.get("config"), *doc.get("layers", [])]:
            if blob and not client.content.exists(blob["digest"]) and soci.has_blob(blob["digest"]):
                _store(client, soci.read_blob(blob["digest"]), blob["digest"], {})
        _store(client, manifest, desc.digest, gc_labels(manifest))
    _store(client, body, target.digest, gc_labels(body))
    client.images.put(Image(image_name, target, record.labels))
    return target


def _store(client: ContainerdClient, data: bytes, digest: str, labels: dict[str, str]) -> None:
    if client.content.exists(digest):
        return
    client.content.write(
        f"soci-wrapper-converted-{digest}",
        lambda off: [data[off:]],
        total=len(data),
        expected=digest,
        labels=labels,
    )


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

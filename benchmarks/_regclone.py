"""Copies of repositories inside one loopback registry, made in milliseconds: every blob is *mounted* from
the source repository (``POST /v2/<dst>/blobs/uploads/?mount=<digest>&from=<src>``, no data moves) and the
manifests are put again, children before parents. A fresh copy per measurement gives every run a
repository with no SOCI index (cold) or with exactly the previous build's index (rebuild), while the image
bytes are pushed once.

Also: the SOCI v1 indexes a registry holds for a manifest (to check what a run pushed).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from wrapper.core.models import SOCI_INDEX_V1, SOCI_LAYER_DIGEST_ANNOTATION
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient


class CloneError(Exception):
    pass


@dataclass
class RepoCopier:
    """Copies tags (with everything they reach) between repositories of the registry at ``host``."""

    client: RegistryClient
    host: str

    def _url(self, path: str) -> str:
        return f"http://{self.host}/v2/{path}"

    def tags(self, repository: str) -> list[str]:
        try:
            with urllib.request.urlopen(self._url(f"{repository}/tags/list"), timeout=30) as response:
                return list(json.load(response).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def mount(self, digest: str, src: str, dst: str) -> None:
        query = urllib.parse.urlencode({"mount": digest, "from": src})
        request = urllib.request.Request(self._url(f"{dst}/blobs/uploads/?{query}"), data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status != 201:
                raise CloneError(
                    f"mounting {digest} from {src} into {dst}: HTTP {response.status} (not mounted)"
                )

    def copy(self, src: str, dst: str, tags: dict[str, str] | None = None) -> None:
        """Copy ``tags`` (source tag -> tag in ``dst``; default: every tag of ``src`` under its own name) and
        everything they reach into ``dst``."""
        done: set[str] = set()
        src_ref = Reference(self.host, src, tag="latest")
        dst_ref = Reference(self.host, dst, tag="latest")

        def put(reference: str) -> str:
            manifest = self.client.get_manifest(src_ref, reference)
            digest = manifest.descriptor.digest
            if digest in done:
                return digest
            doc = manifest.json()
            for child in doc.get("manifests", []):
                put(child["digest"])
            blobs = [doc["config"]] if "config" in doc else []
            for blob in [*blobs, *doc.get("layers", [])]:
                if blob["digest"] not in done:
                    self.mount(blob["digest"], src, dst)
                    done.add(blob["digest"])
            self.client.put_manifest(dst_ref, digest, manifest.body, manifest.descriptor.media_type)
            done.add(digest)
            return digest

        mapping = tags if tags is not None else {tag: tag for tag in self.tags(src)}
        # Subjects first: a SOCI index refers to its image manifest, and the sha256-<hex> tag to the index.
        for tag in sorted(mapping, key=lambda t: t.startswith("sha256-")):
            manifest = self.client.get_manifest(src_ref, tag)
            put(manifest.descriptor.digest)
            self.client.put_manifest(dst_ref, mapping[tag], manifest.body, manifest.descriptor.media_type)


def soci_ztocs(client: RegistryClient, ref: Reference, manifest_digest: str) -> dict[str, str] | None:
    """Layer digest -> zTOC digest of the newest SOCI v1 index the registry holds for ``manifest_digest``
    (found through its ``sha256-<hex>`` referrers tag); None if there is none."""
    indexes = client.get_referrers(ref, manifest_digest, artifact_type=SOCI_INDEX_V1)
    if not indexes:
        return None
    doc = client.get_manifest(ref, indexes[-1].digest).json()
    return {
        layer["annotations"][SOCI_LAYER_DIGEST_ANNOTATION]: layer["digest"]
        for layer in doc.get("layers", [])
        if SOCI_LAYER_DIGEST_ANNOTATION in (layer.get("annotations") or {})
    }


__all__ = ["CloneError", "RepoCopier", "soci_ztocs"]

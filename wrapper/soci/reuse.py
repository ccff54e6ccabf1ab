"""zTOC reuse: index only what is new.

Most CI runs index a new build of an image whose earlier builds were indexed, sharing most layers with them.
A zTOC depends only on the layer's bytes and the span size, so a zTOC made for the same layer digest and span
size can serve again. Before the pull, soci-wrapper looks for such zTOCs:

* in a local cache (``--cache-dir``): zTOC blobs keyed by layer digest and span size, written after each run,
  bounded in size (least recently used first out), safe for two runs at once (every write is a rename);
* in the registry: the SOCI indexes of ``--reuse-from`` images, and of other images of the same repository
  (a bounded number of requests and seconds).

Every zTOC blob is verified against its digest before use; anything that does not check out is ignored
(logged with ``--debug``), never fatal. The real soci still makes every index: the zTOCs are handed to it
through its own mechanisms, its content store and ``soci rebuild-db`` (see ``stage_for_soci``), after which
``soci create`` takes them as existing ("already exists") without reading, or needing, their layers. Layers
whose zTOCs are reused are therefore not pulled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrapper.core.errors import WrapperError
from wrapper.core.models import (
    OCI_MANIFEST,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    SOCI_LAYER_MEDIATYPE_ANNOTATION,
    SOCI_SPAN_SIZE_ANNOTATION,
    SOCI_ZTOC,
    Descriptor,
)
from wrapper.core.options import DEFAULT_CACHE_MAX_BYTES, ReuseOptions
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient

log = logging.getLogger("wrapper.soci.reuse")

DEFAULT_SPAN_SIZE = 4 * 1024 * 1024  # soci's default
MAX_ZTOC_BYTES = 256 * 1024 * 1024  # a zTOC is well under 1% of its layer
_EMPTY_JSON = b"{}"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Ztoc:
    """A zTOC as a SOCI index lists it: which layer it serves, at which span size."""

    layer_digest: str
    layer_media_type: str
    span_size: int
    digest: str
    size: int

    def descriptor(self) -> dict[str, Any]:
        """Its entry in a SOCI index manifest."""
        return {
            "mediaType": SOCI_ZTOC,
            "digest": self.digest,
            "size": self.size,
            "annotations": {
                SOCI_LAYER_DIGEST_ANNOTATION: self.layer_digest,
                SOCI_LAYER_MEDIATYPE_ANNOTATION: self.layer_media_type,
                SOCI_SPAN_SIZE_ANNOTATION: str(self.span_size),
            },
        }


@dataclass(frozen=True)
class Reusable:
    """A verified zTOC on local disk, ready for soci, and where it came from (``cache`` or an image)."""

    ztoc: Ztoc
    path: Path
    source: str


def ztocs_of_index(doc: dict[str, Any]) -> list[Ztoc]:
    """The zTOCs a SOCI index manifest (v1 or v2) lists; entries without a span size are left out (soci
    records zTOCs by layer digest *and* span size, so one of unknown span size cannot be matched)."""
    out: list[Ztoc] = []
    for layer in doc.get("layers", []):
        notes = layer.get("annotations") or {}
        try:
            out.append(
                Ztoc(
                    layer_digest=str(notes[SOCI_LAYER_DIGEST_ANNOTATION]),
                    layer_media_type=str(notes.get(SOCI_LAYER_MEDIATYPE_ANNOTATION, "")),
                    span_size=int(notes[SOCI_SPAN_SIZE_ANNOTATION]),
                    digest=str(layer["digest"]),
                    size=int(layer["size"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.debug("zTOC entry without layer digest or span size ignored: %s", layer)
    return out


def copy_verified(chunks: Iterable[bytes], dest: Path, digest: str, size: int) -> bool:
    """Write ``chunks`` to ``dest`` (atomically) if they are ``size`` bytes with sha256 ``digest``."""
    if not digest.startswith("sha256:") or size > MAX_ZTOC_BYTES:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
    try:
        hasher, written = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > size:
                    return False
                hasher.update(chunk)
                out.write(chunk)
        if written != size or f"sha256:{hasher.hexdigest()}" != digest:
            log.debug("zTOC %s does not match its digest or size; ignored", digest)
            return False
        os.replace(tmp, dest)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


# -- the local cache -----------------------------------------------------------------------------------------
class ZtocCache:
    """zTOC blobs under ``root/blobs/sha256/<hex>``, found by ``root/layers/<span size>/<layer hex>.json``.

    Two runs may share a cache: every file appears by rename, readers tolerate files that vanish, and
    eviction (oldest use first, down to ``max_bytes``) holds an exclusive lock on ``root/.lock``.
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        try:
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (root / "layers").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WrapperError(f"cannot use cache directory {root}: {exc.strerror or exc}") from exc

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def _entry(self, layer_digest: str, span_size: int) -> Path:
        return self.root / "layers" / str(span_size) / f"{layer_digest.removeprefix('sha256:')}.json"

    def lookup(self, layer_digest: str, span_size: int) -> Reusable | None:
        """The cached zTOC for this layer and span size, verified, or None."""
        try:
            meta = json.loads(self._entry(layer_digest, span_size).read_text())
            ztoc = Ztoc(
                layer_digest, str(meta["layer_media_type"]), span_size, meta["digest"], int(meta["size"])
            )
            path = self._blob(ztoc.digest)
            if path.stat().st_size != ztoc.size or _sha256_file(path) != ztoc.digest:
                log.debug("cached zTOC %s is damaged; ignored", ztoc.digest)
                return None
            os.utime(path)  # used: last out
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Reusable(ztoc, path, "cache")

    def add(self, ztoc: Ztoc, source: Path) -> None:
        """Keep ``source`` (the zTOC's bytes) for later runs. Failures are logged, never raised."""
        try:
            blob = self._blob(ztoc.digest)
            if not blob.exists() and not copy_verified(_file_chunks(source), blob, ztoc.digest, ztoc.size):
                return
            entry = self._entry(ztoc.layer_digest, ztoc.span_size)
            entry.parent.mkdir(parents=True, exist_ok=True)
            meta = {"digest": ztoc.digest, "size": ztoc.size, "layer_media_type": ztoc.layer_media_type}
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".incoming-")
            with os.fdopen(fd, "w") as out:
                json.dump(meta, out)
            os.replace(tmp, entry)
        except OSError as exc:
            log.debug("could not add zTOC %s to the cache: %s", ztoc.digest, exc)

    def evict(self) -> int:
        """Remove the least recently used zTOCs until the cache holds at most ``max_bytes``; bytes freed."""
        freed = 0
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            blobs = []
            for path in (self.root / "blobs" / "sha256").iterdir():
                with contextlib.suppress(OSError):
                    st = path.stat()
                    blobs.append((st.st_mtime, st.st_size, path))
            total = sum(size for _, size, _ in blobs)
            for _, size, path in sorted(blobs):
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # its layers/ entry now points nowhere: lookup ignores it
                    total -= size
                    freed += size
        return freed


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    for chunk in _file_chunks(path):
        hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


# -- the registry ----------------------------------------------------------------------------------------
class RegistryZtocs:
    """zTOCs listed by the SOCI indexes of images in the registry, within a request budget."""

    def __init__(
        self, registry: RegistryClient, *, max_requests: int = 60, max_seconds: float = 20.0
    ) -> None:
        self.registry = registry
        self.requests_left = max_requests
        self.deadline = time.monotonic() + max_seconds

    def _spend(self) -> bool:
        if self.requests_left <= 0 or time.monotonic() > self.deadline:
            return False
        self.requests_left -= 1
        return True

    def of_image(self, ref: Reference) -> list[Ztoc]:
        """The zTOCs of every SOCI index the image ``ref`` has: v1 indexes referring to its manifests, and
        v2 indexes inside it (a SOCI-enabled image). Registry failures are logged and end the search."""
        found: list[Ztoc] = []
        try:
            if not self._spend():
                return found
            top = self.registry.get_manifest(ref)
            doc = top.json()
            manifests = [top.descriptor]
            indexes: list[Descriptor] = []
            if top.descriptor.is_index:
                entries = [Descriptor.from_oci(m) for m in doc.get("manifests", [])]
                indexes += [e for e in entries if e.artifact_type == SOCI_INDEX_V2]
                manifests = [e for e in entries if e.is_manifest and e.artifact_type != SOCI_INDEX_V2]
            for manifest in manifests:
                if not self._spend():
                    break
                indexes += self.registry.get_referrers(ref, manifest.digest, artifact_type=SOCI_INDEX_V1)
            for index in indexes:
                if not self._spend():
                    break
                found += ztocs_of_index(self.registry.get_manifest(ref, index.digest).json())
        except (WrapperError, ValueError) as exc:
            log.debug("looking for zTOCs in %s stopped: %s", ref, exc)
        return found

    def in_repository(self, ref: Reference, *, skip: str = "") -> Iterator[tuple[Reference, list[Ztoc]]]:
        """The zTOCs of the SOCI indexes of other images in ``ref``'s repository, image by image, while the
        budget lasts: first the ``sha256-<hex>`` referrers tags (on registries without the referrers API they
        list SOCI v1 indexes directly), then the other tags (their v1 referrers, or their v2 indexes)."""
        try:
            if not self._spend():
                return
            tags = self.registry.list_tags(ref, limit=500)
        except WrapperError as exc:
            log.debug("cannot list the tags of %s: %s", ref.repository, exc)
            return
        referrer_tags = [t for t in tags if t.startswith("sha256-")]
        image_tags = sorted((t for t in tags if not t.startswith("sha256-") and t != ref.tag), reverse=True)
        for tag in referrer_tags:
            if skip and tag == "sha256-" + skip.removeprefix("sha256:"):
                continue
            tagged = Reference(ref.registry, ref.repository, tag=tag)
            found: list[Ztoc] = []
            try:
                if not self._spend():
                    return
                listing = self.registry.get_manifest(tagged).json()
                for entry in listing.get("manifests", []):
                    if entry.get("artifactType") == SOCI_INDEX_V1 and self._spend():
                        found += ztocs_of_index(self.registry.get_manifest(tagged, entry["digest"]).json())
            except (WrapperError, ValueError, KeyError, TypeError) as exc:
                log.debug("referrers tag %s: %s", tag, exc)
            yield tagged, found
        for tag in image_tags:
            if self.requests_left <= 0 or time.monotonic() > self.deadline:
                return
            tagged = Reference(ref.registry, ref.repository, tag=tag)
            yield tagged, self.of_image(tagged)

    def fetch(self, ref: Reference, ztoc: Ztoc, dest: Path) -> bool:
        """Download ``ztoc`` from ``ref``'s repository into ``dest``, verified; False if it does not check out."""
        if not self._spend():
            return False
        try:
            with self.registry.open_blob(ref, ztoc.digest) as stream:
                return copy_verified(stream, dest, ztoc.digest, ztoc.size)
        except WrapperError as exc:
            log.debug("zTOC %s could not be fetched from %s: %s", ztoc.digest, ref.repository, exc)
            return False


# -- handing zTOCs to soci -----------------------------------------------------------------------------------
def stage_for_soci(soci_root: Path, subject: Descriptor, reusable: list[Reusable]) -> None:
    """Put ``reusable`` zTOCs into soci's content store (``<root>/content``, an OCI layout) with a SOCI index
    manifest v1 listing them whose subject is ``subject`` (a manifest in containerd): ``soci rebuild-db`` then
    records them, and ``soci create`` takes them as existing zTOCs for their layers. That index only carries
    the zTOCs: soci create makes (and soci push sends) the image's own, newer index."""
    if not reusable:
        return
    blobs = soci_root / "content" / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for item in reusable:
        dest = blobs / item.ztoc.digest.removeprefix("sha256:")
        if not dest.exists():
            copy_verified(_file_chunks(item.path), dest, item.ztoc.digest, item.ztoc.size)
    empty = "sha256:" + hashlib.sha256(_EMPTY_JSON).hexdigest()
    (blobs / empty.removeprefix("sha256:")).write_bytes(_EMPTY_JSON)
    carrier = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SOCI_INDEX_V1,
        "config": {"mediaType": SOCI_INDEX_V1, "digest": empty, "size": len(_EMPTY_JSON)},
        "layers": [item.ztoc.descriptor() for item in reusable],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": {"org.soci-wrapper.reused-ztocs": "true"},
    }
    body = json.dumps(carrier, sort_keys=True).encode()
    (blobs / hashlib.sha256(body).hexdigest()).write_bytes(body)


# -- one run's reuse -------------------------------------------------------------------------------------------
def find_reusable(
    registry: RegistryClient,
    image: Reference,
    layers: dict[str, Descriptor],
    span_size: int,
    options: ReuseOptions,
    work: Path,
) -> dict[str, Reusable]:
    """A verified zTOC on disk for each of ``layers`` (by digest) that has one of ``span_size``: in the cache,
    in the SOCI indexes of the ``--reuse-from`` images, then in those of other images of ``image``'s
    repository (a bounded search); layers without one are not in the result."""
    found: dict[str, Reusable] = {}
    if not options.enabled or not layers:
        return found
    if options.cache_dir is not None:
        cache = ZtocCache(options.cache_dir, options.cache_max_bytes)
        for digest in layers:
            if (hit := cache.lookup(digest, span_size)) is not None:
                found[digest] = hit
    source = RegistryZtocs(registry)

    def take(ref: Reference, ztocs: list[Ztoc]) -> None:
        for ztoc in ztocs:
            if ztoc.layer_digest not in layers or ztoc.layer_digest in found or ztoc.span_size != span_size:
                continue
            dest = work / ztoc.digest.removeprefix("sha256:")
            if source.fetch(ref, ztoc, dest):
                found[ztoc.layer_digest] = Reusable(ztoc, dest, f"registry {ref}")

    for ref in options.reuse_from:
        if len(found) == len(layers):
            return found
        take(ref, source.of_image(ref))
    if options.search_repository and len(found) < len(layers):
        for ref, ztocs in source.in_repository(image, skip=image.digest or ""):
            take(ref, ztocs)
            if len(found) == len(layers):
                break
    return found


def remember(options: ReuseOptions, ztocs: Iterable[tuple[Ztoc, Path]]) -> None:
    """After a run: keep its zTOCs in the cache (if there is one), then trim the cache to its size."""
    if not options.enabled or options.cache_dir is None:
        return
    cache = ZtocCache(options.cache_dir, options.cache_max_bytes)
    for ztoc, path in ztocs:
        cache.add(ztoc, path)
    cache.evict()

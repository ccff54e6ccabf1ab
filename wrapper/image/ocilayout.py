"""An OCI image layout (a directory, or a tar of one) as the image to index: ``soci-wrapper index --from-oci``.

The layout is what ``docker buildx build --output type=oci``, ``docker save`` (Docker 25+) and ``skopeo copy
... oci-archive:`` write: an ``oci-layout`` file, ``index.json`` and ``blobs/sha256/...``. It is read in place:
a tar is opened in random-access mode and each blob streamed from its member, never extracted to disk nor
held whole in memory. Its blobs go into containerd's content store over gRPC (containerd checks each digest
and size at commit), with the garbage-collection labels a pull sets, and an image record names the image.

Every failure is a UsageError (exit 2) naming the layout: not a layout, no way to choose the image, a blob
missing or damaged.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import Image, gc_labels
from wrapper.core.errors import ContainerdError, UsageError, WrapperError
from wrapper.core.models import Descriptor, Platform, PlatformChoice, PlatformImage, ResolvedImage
from wrapper.core.progress import QuietReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.image.pull import BlobRecord, PullResult
from wrapper.image.resolve import config_platform, index_entries, platform_image, select_platforms

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
MAX_DOCUMENT_BYTES = 4 << 20
_CHUNK = 1 << 20
_UNKNOWN = Platform("unknown", "unknown")


class OciLayout:
    """A layout directory or tar, open for reading blobs; a context manager (closes the tar)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            pass
        elif path.is_file():
            try:
                self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close()); random access over the file: headers only are read
                for member in self._tar.getmembers():
                    if member.isfile():
                        self._members[_normal(member.name)] = member
            except (tarfile.TarError, OSError):
                self.close()
                raise UsageError(
                    f"{path}: not an OCI image layout (neither a directory nor a tar)",
                    hint="write one with docker buildx --output type=oci, docker save (Docker 25+) or skopeo",
                ) from None
        else:
            raise UsageError(f"{path}: no such file or directory")
        if not self._has("oci-layout") or not self._has("index.json"):
            self.close()
            raise UsageError(
                f"{path}: not an OCI image layout (no oci-layout and index.json)",
                hint="write one with docker buildx --output type=oci, docker save (Docker 25+) or skopeo",
            )

    def __enter__(self) -> OciLayout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    # -- files ---------------------------------------------------------------------------------------------
    def _has(self, name: str) -> bool:
        if self._tar is not None:
            return name in self._members
        return (self.path / name).is_file()

    def _size(self, name: str) -> int | None:
        if self._tar is not None:
            member = self._members.get(name)
            return member.size if member is not None else None
        file = self.path / name
        return file.stat().st_size if file.is_file() else None

    def _open(self, name: str) -> IO[bytes]:
        if self._tar is not None:
            handle = self._tar.extractfile(self._members[name])
            assert handle is not None
            return handle
        return (self.path / name).open("rb")

    def _read_small(self, name: str, what: str) -> bytes:
        size = self._size(name)
        if size is None:
            raise UsageError(f"{self.path}: {what} is missing")
        if size > MAX_DOCUMENT_BYTES:
            raise UsageError(f"{self.path}: {what} is implausibly large ({size} bytes)")
        with self._open(name) as f:
            return f.read()

    @staticmethod
    def blob_name(digest: str) -> str:
        algorithm, _, hex_part = digest.partition(":")
        return f"blobs/{algorithm}/{hex_part}"

    def check_blob(self, desc: Descriptor) -> None:
        """The blob is there with the size its descriptor names (its digest is checked as it is stored)."""
        size = self._size(self.blob_name(desc.digest))
        if size is None:
            raise UsageError(f"{self.path}: blob {desc.digest} is missing")
        if size != desc.size:
            raise UsageError(
                f"{self.path}: blob {desc.digest} is damaged ({size} bytes, its descriptor says {desc.size})"
            )

    def document(self, desc: Descriptor) -> bytes:
        """A manifest or index blob, whole, checked against its digest."""
        self.check_blob(desc)
        body = self._read_small(self.blob_name(desc.digest), f"blob {desc.digest}")
        if "sha256:" + hashlib.sha256(body).hexdigest() != desc.digest:
            raise UsageError(
                f"{self.path}: blob {desc.digest} is damaged (its content does not match its digest)"
            )
        return body

    def chunks(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` on, a chunk at a time."""
        with self._open(self.blob_name(digest)) as f:
            if offset:
                f.seek(offset)
            while chunk := f.read(_CHUNK):
                yield chunk

    # -- the image -------------------------------------------------------------------------------------------
    def top_entries(self) -> list[Descriptor]:
        body = self._read_small("index.json", "index.json")
        try:
            return index_entries(f"{self.path} (index.json)", body)
        except WrapperError as exc:
            raise UsageError(f"{self.path}: not an OCI image layout ({exc.message})") from None

    def choose(self, ref: Reference) -> Descriptor:
        """index.json's one image, or the one whose ref.name annotation names ``ref``'s tag (or ``ref``)."""
        entries = [e for e in self.top_entries() if e.is_index or e.is_manifest]
        if not entries:
            raise UsageError(f"{self.path}: index.json names no image")
        names = {str(ref), ref.tag or ""} - {""}
        matches = [
            e
            for e in entries
            if e.annotations.get(REF_NAME) in names or e.annotations.get(CONTAINERD_NAME) in names
        ]
        if len({e.digest for e in matches}) == 1:
            return matches[0]
        if len({e.digest for e in entries}) == 1:
            return entries[0]
        found = sorted({e.annotations[REF_NAME] for e in entries if REF_NAME in e.annotations})
        raise UsageError(
            f"{self.path}: index.json has {len(entries)} images and none is named {ref.tag or str(ref)}",
            hint="tag IMAGE_REF with one of their org.opencontainers.image.ref.name values: "
            + (", ".join(found) if found else "(none has one)"),
        )

    def resolve(self, ref: Reference, options: PlatformChoice) -> ResolvedImage:
        """The chosen image, as ``wrapper.image.resolve`` describes one from a registry; every blob checked present."""
        target = self.choose(ref)
        top = self.document(target)
        plain = Descriptor(target.media_type, target.digest, target.size)
        try:
            if target.is_index:
                entries = [e for e in index_entries(str(ref), top) if e.is_manifest]
                all_platforms = [e.platform or _UNKNOWN for e in entries]
                chosen = select_platforms(all_platforms, options)
                manifests: list[tuple[Descriptor, bytes]] = []
                selected: list[PlatformImage] = []
                for entry in entries:
                    body = self.document(entry)
                    image = platform_image(entry.platform or _UNKNOWN, entry, body, f"{ref} ({entry.digest})")
                    manifests.append((entry, body))
                    if image.platform in chosen and not any(s.platform == image.platform for s in selected):
                        selected.append(image)
                resolved = ResolvedImage(ref, plain, top, manifests, all_platforms, selected)
            else:
                image = platform_image(_UNKNOWN, plain, top, str(ref))
                config = self.document(image.config)
                image.platform = config_platform(image.config, config)
                select_platforms([image.platform], options)
                resolved = ResolvedImage(ref, plain, None, [(plain, top)], [image.platform], [image])
        except UsageError:
            raise
        except WrapperError as exc:  # a malformed document, or a platform the layout lacks
            raise UsageError(f"{self.path}: {exc.message}", hint=exc.hint) from None
        for _, body in resolved.manifests:
            for desc in _blobs_of(body):
                self.check_blob(desc)
        return resolved


@dataclass
class Importer:
    """Stores a resolved layout image in containerd: every blob, the documents with GC labels, the record."""

    layout: OciLayout
    containerd: ContainerdClient
    reporter: Reporter = field(default_factory=QuietReporter)

    def run(self, image: ResolvedImage) -> PullResult:
        ref = image.reference
        records: list[BlobRecord] = []
        seen: set[str] = set()
        self.reporter.stage("import", f"{self.layout.path} as {ref}")
        with self.containerd.lease():
            for _, body in image.manifests:
                for desc in _blobs_of(body):
                    if desc.digest not in seen:
                        seen.add(desc.digest)
                        records.append(self._store(desc, "blob", {}))
            for manifest, body in image.manifests:
                if manifest.digest not in seen:
                    seen.add(manifest.digest)
                    records.append(self._store(manifest, "manifest", gc_labels(body)))
            if image.index_body is not None:
                records.append(self._store(image.target, "index", gc_labels(image.index_body)))
            name = str(ref)
            self.containerd.images.put(Image(name=name, target=image.target))
        return PullResult(
            reference=ref,
            image_name=name,
            target=image.target,
            selected=image.selected,
            all_platforms=image.all_platforms,
            blobs=records,
        )

    def _store(self, desc: Descriptor, kind: str, labels: dict[str, str]) -> BlobRecord:
        content = self.containerd.content
        record = BlobRecord(
            desc.digest, desc.size, desc.media_type, kind, str(desc.platform or ""), "fetched"
        )
        if content.exists(desc.digest):
            content.update_labels(desc.digest, labels)
            record.action = "present"
            return record
        self.reporter.blob_started(desc.digest, "import", desc.size)
        try:
            written = content.write(
                f"soci-wrapper-import-{desc.digest}",
                lambda offset: self.layout.chunks(desc.digest, offset),
                total=desc.size,
                expected=desc.digest,
                labels=labels,
                on_progress=lambda n: self.reporter.blob_advanced(desc.digest, n),
            )
        except ContainerdError as exc:
            if "FAILED_PRECONDITION" in (exc.detail or ""):  # containerd's digest or size check at commit
                raise UsageError(
                    f"{self.layout.path}: blob {desc.digest} is damaged (its content does not match its digest)"
                ) from None
            raise
        if written.already_existed:
            content.update_labels(desc.digest, labels)
            record.action = "present"
        self.reporter.blob_finished(desc.digest)
        return record


def _blobs_of(manifest_body: bytes) -> list[Descriptor]:
    doc: dict[str, Any] = json.loads(manifest_body)
    return [Descriptor.from_oci(d) for d in [doc["config"], *doc.get("layers", [])]]


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")

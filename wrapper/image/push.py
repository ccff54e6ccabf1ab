"""Push an image record from containerd's content store to a registry with the project's own client.

Used for SOCI index manifest v2: ``soci convert`` writes a new image (rewritten manifests, SOCI indexes,
zTOCs, a new image index) into containerd, and leaves pushing it to other tools. Order makes a half-finished
push invisible: every blob first (skipped after a HEAD when the repository already has it, which is the case
for the original layers), then each manifest by digest, and the tagged index last.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from wrapper.containerd.client import ContainerdClient
from wrapper.core.errors import ContainerdError, NotFoundError, RegistryError
from wrapper.core.models import Descriptor
from wrapper.core.progress import QuietReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.registry.client import MAX_MANIFEST_BYTES, RegistryClient, SourceMismatchError

log = logging.getLogger("wrapper.image.push")


class PushCancelled(Exception):
    """Raised inside an upload thread when another upload failed or the run was interrupted."""


@dataclass
class PushResult:
    reference: str
    digest: str
    blobs_uploaded: list[str] = field(default_factory=list)
    blobs_skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    manifests_pushed: list[str] = field(default_factory=list)


class ImagePusher:
    def __init__(
        self,
        containerd: ContainerdClient,
        registry: RegistryClient,
        *,
        reporter: Reporter | None = None,
        max_concurrent_uploads: int = 4,
    ) -> None:
        self.containerd = containerd
        self.registry = registry
        self.reporter = reporter or QuietReporter()
        self.max_concurrent_uploads = max_concurrent_uploads
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def push(self, image_name: str, dest: Reference) -> PushResult:
        """Push containerd image record ``image_name`` to ``dest``: all blobs, then the manifests, the tag last."""
        if not dest.tag:
            raise RegistryError(f"cannot push to {dest}: a tag is needed")
        target = self.containerd.images.get(image_name).target
        result = PushResult(reference=str(dest), digest=target.digest)
        top = self._read_small(target)
        children = (
            [Descriptor.from_oci(m) for m in json.loads(top).get("manifests", [])] if target.is_index else []
        )
        # Each manifest to push (by digest) with its body; a child that containerd does not hold (a platform
        # soci did not convert and the pull did not fetch) must already be in the registry.
        manifests: list[tuple[Descriptor, bytes]] = []
        for child in children:
            if self.containerd.content.exists(child.digest):
                manifests.append((child, self._read_small(child)))
            elif self.registry.head_manifest(dest, child.digest) is None:
                raise NotFoundError(
                    f"manifest {child.digest} is neither in containerd nor in {dest.repository}"
                )
        blobs: dict[str, Descriptor] = {}
        for _, body in manifests if target.is_index else [(target, top)]:
            doc = json.loads(body)
            for blob in [doc["config"], *doc.get("layers", [])]:
                desc = Descriptor.from_oci(blob)
                blobs.setdefault(desc.digest, desc)
        pool = ThreadPoolExecutor(self.max_concurrent_uploads, thread_name_prefix="push")
        try:
            for _ in pool.map(lambda b: self._push_blob(dest, b, result), blobs.values()):
                pass
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: do not wait for an upload the registry is slow to answer; the run ends now.
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BaseException:
            self._stop.set()  # a failed upload: the others stop at their next chunk
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        for desc, body in manifests:
            self.registry.put_manifest(dest, desc.digest, body, desc.media_type)
            result.manifests_pushed.append(desc.digest)
        self.registry.put_manifest(dest, dest.tag, top, target.media_type)
        result.manifests_pushed.append(target.digest)
        return result

    def _push_blob(self, dest: Reference, desc: Descriptor, result: PushResult) -> None:
        if self._stop.is_set():
            raise PushCancelled(desc.digest)
        if not self.containerd.content.exists(desc.digest):
            # Not converted by soci (an original layer the sparse pull skipped): the repository must have it.
            if self.registry.blob_exists(dest, desc.digest):
                self._record(result, desc, uploaded=False)
                return
            raise NotFoundError(
                f"blob {desc.digest} is neither in containerd nor in {dest.registry}/{dest.repository}",
                hint="push the original image to the same repository first",
            )
        announced = False

        def source() -> Iterator[bytes]:  # called again if the upload is retried
            nonlocal announced
            if not announced:
                self.reporter.blob_started(desc.digest, "upload", desc.size)
                announced = True
            for chunk in self.containerd.content.read(desc.digest):
                if self._stop.is_set():
                    raise PushCancelled(desc.digest)
                self.reporter.blob_advanced(desc.digest, len(chunk))
                yield chunk

        try:
            uploaded = self.registry.push_blob(dest, desc, source)  # HEADs first: False if already there
        except SourceMismatchError as exc:  # what containerd holds is not the blob its descriptor names
            raise ContainerdError(
                f"containerd's copy of blob {desc.digest} is damaged: {exc.problem}; no manifest was pushed",
                hint="remove the image from containerd and run again",
            ) from None
        if announced:
            self.reporter.blob_finished(desc.digest)
        self._record(result, desc, uploaded=uploaded)

    def _record(self, result: PushResult, desc: Descriptor, *, uploaded: bool) -> None:
        with self._lock:
            if uploaded:
                result.blobs_uploaded.append(desc.digest)
                result.bytes_uploaded += desc.size
            else:
                result.blobs_skipped.append(desc.digest)

    def _read_small(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{desc.digest} is too large for a manifest ({desc.size} bytes)")
        return b"".join(self.containerd.content.read(desc.digest))

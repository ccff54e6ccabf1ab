"""Pull an image from a registry into containerd's content store, over gRPC, without unpacking it.

What the image is (its manifests, the platforms chosen) comes from ``wrapper.image.resolve``.

Blobs stream straight from the HTTP response into containerd's content Write stream (never held in memory);
containerd checks digest and size at commit. Several blobs are in flight at once. A blob whose transfer
breaks resumes from the offset containerd already holds (STAT) with an HTTP Range request.

Sparse by default: layers smaller than ``min_layer_size`` are not downloaded, because soci never reads them.
Indexes, and the manifests and configs of every platform of an index, are always stored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.content import WriteResult
from wrapper.containerd.images import Image, gc_labels
from wrapper.core.errors import ContainerdError, NotFoundError, RegistryError
from wrapper.core.models import Descriptor, Platform, PlatformImage, ResolvedImage
from wrapper.core.options import PullOptions
from wrapper.core.progress import QuietReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.image.resolve import manifest_config, resolve_image
from wrapper.registry.client import BlobReadError, RegistryClient

log = logging.getLogger("wrapper.image.pull")

SOURCE_LABEL = "containerd.io/distribution.source"
BLOB_ATTEMPTS = 5


class PullCancelled(Exception):
    """Raised inside a transfer thread when another transfer failed or the run was interrupted."""


@dataclass
class BlobRecord:
    digest: str
    size: int
    media_type: str
    kind: str  # index | manifest | config | layer
    platform: str = ""
    action: str = "fetched"  # fetched | present | skipped
    bytes_downloaded: int = 0
    resumed_from: int = 0


@dataclass
class PullResult:
    reference: Reference
    image_name: str
    target: Descriptor
    selected: list[PlatformImage]
    all_platforms: list[Platform]
    blobs: list[BlobRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def digest(self) -> str:
        return self.target.digest

    def summary(self) -> dict[str, Any]:
        fetched = [b for b in self.blobs if b.action == "fetched"]
        skipped = [b for b in self.blobs if b.action == "skipped"]
        present = [b for b in self.blobs if b.action == "present"]
        return {
            "image": str(self.reference),
            "digest": self.digest,
            "media_type": self.target.media_type,
            "platforms": [str(p.platform) for p in self.selected],
            "blobs_fetched": {"count": len(fetched), "bytes": sum(b.size for b in fetched)},
            "blobs_skipped": {"count": len(skipped), "bytes": sum(b.size for b in skipped)},
            "blobs_present": {"count": len(present), "bytes": sum(b.size for b in present)},
            "bytes_downloaded": sum(b.bytes_downloaded for b in self.blobs),
            "seconds": round(self.seconds, 3),
            "blobs": [
                {
                    "digest": b.digest,
                    "size": b.size,
                    "kind": b.kind,
                    "platform": b.platform,
                    "action": b.action,
                }
                for b in self.blobs
            ],
        }


class Puller:
    """Pulls one image; use :func:`pull`."""

    def __init__(
        self,
        registry: RegistryClient,
        containerd: ContainerdClient,
        options: PullOptions,
        reporter: Reporter | None = None,
        on_stored: Callable[[str], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.registry = registry
        self.containerd = containerd
        self.options = options
        self.reporter = reporter or QuietReporter()
        # Told each blob's digest as soon as it is in the content store (from the transfer threads): what
        # builds zTOCs while the pull goes on (wrapper.soci.prebuild) starts there.
        self.on_stored = on_stored
        self.on_bytes = on_bytes  # told the size of every chunk downloaded (how fast the pull runs)
        self._records: list[BlobRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._largest_first: _LargestFirst | None = None

    # -- the pull ----------------------------------------------------------------------------------------
    def run(self, image: ResolvedImage) -> PullResult:
        started = time.monotonic()
        ref, selected, manifests = image.reference, image.selected, image.manifests
        source = {f"{SOURCE_LABEL}.{ref.registry}": ref.repository}

        # -- what to fetch ---------------------------------------------------------------------------------
        tasks: list[tuple[Descriptor, str, str]] = []  # (descriptor, kind, platform)
        small: list[tuple[Descriptor, bytes, str]] = []  # already in hand: (descriptor, body, platform)
        seen: set[str] = set()
        for desc, body in manifests:
            config = manifest_config(f"{ref} ({desc.digest})", body)
            if config.digest not in seen:
                seen.add(config.digest)
                if config.digest in image.fetched:
                    small.append((config, image.fetched[config.digest], str(desc.platform or "")))
                else:
                    tasks.append((config, "config", str(desc.platform or "")))
        for plat_image in selected:
            for layer in plat_image.layers:
                if layer.digest in seen:
                    continue
                seen.add(layer.digest)
                wanted = self.options.full or layer.size >= self.options.min_layer_size
                if wanted and layer.digest not in self.options.skip_layers:
                    tasks.append((layer, "layer", str(plat_image.platform)))
                else:
                    self._record(
                        BlobRecord(
                            layer.digest,
                            layer.size,
                            layer.media_type,
                            "layer",
                            str(plat_image.platform),
                            "skipped",
                        )
                    )

        self.reporter.stage(
            "pull",
            f"{ref} ({', '.join(str(s.platform) for s in selected)}; "
            f"{sum(1 for t in tasks if t[1] == 'layer')} layers"
            + ("" if self.options.full else f", sparse below {self.options.min_layer_size} bytes")
            + ")",
        )
        with self.containerd.lease():
            for desc, body, _ in small:  # configs first: a layer can be indexed once its config is there
                self._store_small(desc, body, "config", source)
            self._fetch_all(ref, tasks, source)
            # Manifests and the index last: they reference the blobs above through GC labels.
            for desc, body in manifests:
                self._store_small(desc, body, "manifest", {**source, **gc_labels(body)})
            if image.index_body is not None:
                labels = {**source, **gc_labels(image.index_body)}
                self._store_small(image.target, image.index_body, "index", labels)
            name = str(ref)
            try:  # keep labels others put on an existing record (soci's GC label for its index)
                labels = self.containerd.images.get(name).labels
            except NotFoundError:
                labels = {}
            self.containerd.images.put(Image(name=name, target=_plain(image.target), labels=labels))

        return PullResult(
            reference=ref,
            image_name=name,
            target=_plain(image.target),
            selected=selected,
            all_platforms=image.all_platforms,
            blobs=list(self._records),
            seconds=time.monotonic() - started,
        )

    # -- transfers ---------------------------------------------------------------------------------------
    def _fetch_all(
        self, ref: Reference, tasks: list[tuple[Descriptor, str, str]], labels: dict[str, str]
    ) -> None:
        if not tasks:
            return
        # Configs first (small, and each layer's indexing waits for its config), then large blobs first, so
        # the longest transfers start early.
        ordered = sorted(tasks, key=lambda t: (t[1] != "config", -t[0].size))
        pool = ThreadPoolExecutor(self.options.max_concurrent_downloads, thread_name_prefix="pull")
        futures: list[Future[None]] = []
        if self.options.largest_layer_first:
            large = [t for t in ordered if t[1] == "layer" and t[0].size >= self.options.min_layer_size]
            ordered = [t for t in ordered if t not in large]
            if large:
                self._largest_first = _LargestFirst(
                    large, self.options.max_concurrent_downloads, self.options.largest_alone_below
                )

                def more_lanes(count: int) -> None:
                    with self._lock, contextlib.suppress(RuntimeError):  # the pull is over: shut down
                        if not self._stop.is_set():
                            futures.extend(pool.submit(self._lane, ref, labels) for _ in range(count))

                self._largest_first.open_lanes = more_lanes
                futures.append(pool.submit(self._lane, ref, labels))
        futures += [
            pool.submit(self._fetch_blob, ref, desc, kind, plat, labels) for desc, kind, plat in ordered
        ]
        try:
            while True:
                with self._lock:  # lanes may be added while we wait
                    pending = [fut for fut in futures if not fut.done()]
                    finished = [fut for fut in futures if fut.done()]
                for fut in finished:
                    if not fut.cancelled() and (exc := fut.exception()) is not None:
                        raise exc
                if not pending:
                    break
                wait(pending, return_when=FIRST_EXCEPTION)
        except BaseException:
            # A failed blob, Ctrl-C or SIGTERM: stop the other transfers at their next chunk, not at their end.
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _lane(self, ref: Reference, labels: dict[str, str]) -> None:
        """Large layers, one after the other, from the shared largest-first queue."""
        assert self._largest_first is not None
        while (task := self._largest_first.next()) is not None:
            if self._stop.is_set():
                raise PullCancelled(task[0].digest)
            desc, kind, plat = task
            self._fetch_blob(ref, desc, kind, plat, labels)

    def _fetch_blob(
        self, ref: Reference, desc: Descriptor, kind: str, plat: str, labels: dict[str, str]
    ) -> None:
        content = self.containerd.content
        if content.exists(desc.digest):
            content.update_labels(desc.digest, labels)
            self._record(BlobRecord(desc.digest, desc.size, desc.media_type, kind, plat, "present"))
            self.reporter.blob_finished(desc.digest, "present")
            return
        record = BlobRecord(desc.digest, desc.size, desc.media_type, kind, plat, "fetched")
        ingest_ref = f"soci-wrapper-pull-{desc.digest}"
        started = False

        def source(offset: int) -> Iterator[bytes]:
            nonlocal started
            if not started:
                self.reporter.blob_started(desc.digest, kind, desc.size, offset)
                started = True
            if offset:
                record.resumed_from = record.resumed_from or offset
                log.info("resuming %s at byte %d", desc.digest, offset)
            with self.registry.open_blob(ref, desc.digest, offset=offset) as stream:
                for chunk in stream:
                    if self._stop.is_set():
                        raise PullCancelled(desc.digest)
                    record.bytes_downloaded += len(chunk)
                    if self._largest_first is not None:
                        self._largest_first.advanced(len(chunk))
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    yield chunk

        written: WriteResult | None = None
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(BLOB_ATTEMPTS),
                wait=wait_exponential_jitter(multiplier=0.2, max=5),
                retry=retry_if_exception(_is_transient),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        log.info("retrying %s (attempt %d)", desc.digest, attempt.retry_state.attempt_number)
                    try:
                        written = content.write(
                            ingest_ref,
                            source,
                            total=desc.size,
                            expected=desc.digest,
                            labels=labels,
                            on_progress=lambda n: self.reporter.blob_advanced(desc.digest, n),
                        )
                    except ContainerdError as exc:
                        if _is_content_mismatch(exc):  # the registry's fault, not containerd's
                            raise RegistryError(
                                f"{ref.registry} served {desc.digest} with the wrong content: {exc.message}"
                            ) from None
                        raise
        except BlobReadError as exc:  # every attempt broke off, each after resuming where the last one did
            raise RegistryError(f"{exc.message} (gave up after {BLOB_ATTEMPTS} attempts)") from None
        if written is not None and written.already_existed:
            # Another pull (of an image sharing this blob) stored it meanwhile: it was not fetched here.
            content.update_labels(desc.digest, labels)
            record.action = "present"
            self.reporter.blob_finished(desc.digest, "present")
            self._record(record)
            return
        self.reporter.blob_finished(
            desc.digest, f"resumed at {record.resumed_from}" if record.resumed_from else ""
        )
        self._record(record)

    def _store_small(self, desc: Descriptor, body: bytes, kind: str, labels: dict[str, str]) -> None:
        content = self.containerd.content
        if content.exists(desc.digest):
            content.update_labels(desc.digest, labels)
            self._record(
                BlobRecord(desc.digest, desc.size, desc.media_type, kind, str(desc.platform or ""), "present")
            )
            return
        written = content.write(
            f"soci-wrapper-pull-{desc.digest}",
            lambda offset: iter([body[offset:]]),
            total=len(body),
            expected=desc.digest,
            labels=labels,
        )
        if written.already_existed:  # stored meanwhile by another pull
            content.update_labels(desc.digest, labels)
        action = "present" if written.already_existed else "fetched"
        self._record(
            BlobRecord(
                desc.digest, desc.size, desc.media_type, kind, str(desc.platform or ""), action, len(body)
            )
        )

    def _record(self, record: BlobRecord) -> None:
        with self._lock:
            self._records.append(record)
        if self.on_stored is not None and record.action != "skipped":
            try:
                self.on_stored(record.digest)
            except Exception:  # an optimisation must not break the pull
                log.debug("on_stored callback failed for %s", record.digest, exc_info=True)


class _LargestFirst:
    """The largest layer first, on its own, so that it is in (and its zTOC, the longest to build, can start)
    as early as it can be: downloaded side by side with the others on a link they share, it lands last. Once
    it is in, the other large layers download side by side (largest first), as without this. A single stream
    may be slower than several (a registry far away, a per-connection limit): if the first one runs under
    ``MIN_RATE`` after ``PROBE_SECONDS``, the others start at once; so they do when it runs over ``max_rate``
    (no early builds are made for so fast a pull).

    (Measured on 2 cores: every large layer in turn was as fast behind an 800 Mbit/s link, but made a 2 GiB
    image of four equal layers 7 % slower, its last layer landing later; see benchmarks/README.md.)"""

    MIN_RATE = 64 * 1024 * 1024  # bytes/s: well above what one soci create indexes a layer at (~36 MiB/s)
    PROBE_SECONDS = 0.5

    def __init__(
        self,
        tasks: list[tuple[Descriptor, str, str]],
        lanes: int,
        max_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._queue = list(tasks)
        self._lanes = lanes
        self._max_rate = max_rate
        self._lock = threading.Lock()
        self._started: float | None = None
        self._bytes = 0
        self._decided = lanes <= 1
        self._taken = 0
        self.open_lanes: Callable[[int], None] | None = None  # opens this many more lanes

    def next(self) -> tuple[Descriptor, str, str] | None:
        with self._lock:
            task = self._queue.pop(0) if self._queue else None
            self._taken += 1
            first_in = self._taken == 2 and not self._decided  # the lane asks again: the largest is in
            if first_in:
                self._decided = True
        if first_in and self.open_lanes is not None:
            self.open_lanes(self._lanes - 1)
        return task

    def advanced(self, count: int) -> None:
        """``count`` more bytes of a large layer arrived."""
        if self._decided:
            return
        with self._lock:
            now = self._clock()
            if self._started is None:
                self._started = now
            self._bytes += count
            elapsed = now - self._started
            if self._decided or elapsed < self.PROBE_SECONDS:
                return
            self._decided = True
            rate = self._bytes / elapsed
        fast = self._max_rate is not None and rate > self._max_rate
        if (rate < self.MIN_RATE or fast) and self.open_lanes is not None:
            log.debug("one stream runs at %.0f MiB/s: large layers now download side by side", rate / 2**20)
            self.open_lanes(self._lanes - 1)


def _is_transient(exc: BaseException) -> bool:
    """Worth another try of one blob: a broken transfer or stream (the next try resumes where it broke).

    Refusals are not: auth, not found, content that fails containerd's digest or size check at commit
    (FAILED_PRECONDITION). The registry client has already retried connection errors, 429 and 5xx.
    """
    if isinstance(exc, BlobReadError):
        return True
    if isinstance(exc, ContainerdError):  # not a daemon that died, nor a full disk
        return not _is_content_mismatch(exc) and not getattr(exc, "permanent", False)
    return isinstance(exc, OSError)


def _is_content_mismatch(exc: ContainerdError) -> bool:
    return "FAILED_PRECONDITION" in (exc.detail or "")


def _plain(desc: Descriptor) -> Descriptor:
    return Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


def pull(
    registry: RegistryClient,
    containerd: ContainerdClient,
    ref: Reference,
    options: PullOptions | None = None,
    reporter: Reporter | None = None,
) -> PullResult:
    """Pull ``ref`` into containerd (see the module docstring); returns what was stored and skipped."""
    options = options or PullOptions()
    return Puller(registry, containerd, options, reporter).run(resolve_image(registry, ref, options))

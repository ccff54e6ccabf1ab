"""Index each large layer as soon as it is in containerd, while the rest of the image still downloads.

Without this the run is strictly sequential: the whole pull, then ``soci create`` over all layers. On the
cold path the pull is a fifth of the run, so overlapping it with zTOC building is the largest cut there is
(the zTOC work itself is the real soci's, and cannot be made cheaper from outside).

How, with the real soci and its own mechanisms only:

1. As soon as a layer soci would index, and its platform's config, are in containerd's content store, a
   one-layer manifest (the image's config, that layer) is stored beside them under a lease of this module's,
   with an image record of its own;
2. ``soci create`` runs on that record, with a soci root of its own (soci holds its artifacts database
   locked while it runs: one root per process lets the layers build in parallel), at most one per CPU;
3. after the pull, the zTOCs built go to the run's own soci root the way reused zTOCs do
   (``wrapper.soci.reuse.stage_for_soci`` and ``soci rebuild-db``), and the run's ``soci create`` or ``soci
   convert`` takes them as existing: it makes the image's index without reading those layers again.

When the pull alone keeps the CPUs busy (a registry on a fast link, a small machine), the early builds only
take CPU from it: on 2 cores and loopback they made a 2 GiB image 7 % slower, where behind an 800 Mbit/s link
they made a 300 MiB one 12 % faster. So with ``max_pull_rate`` (``--overlap auto``) a layer is built early only
while the pull so far runs under that rate; the others are left to the run's own soci call.

A zTOC depends only on the layer's bytes and the span size, so it is the zTOC the run's own soci create would
have built (the equality tests check it). A prefetch list is not given to these one-layer builds: soci makes a
layer's prefetch artifact from its zTOC whether it built it or took it as existing, so the run's own soci call
adds them (tests/e2e/test_prefetch.py). Anything that goes wrong here is logged (``--debug``) and left to
the run's own soci call, which builds what is missing and reports failures as it always does: this module only
ever saves time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import Image, gc_labels
from wrapper.core.errors import WrapperError
from wrapper.core.models import Descriptor, PlatformImage, ResolvedImage
from wrapper.core.report import SociEvent
from wrapper.soci.reuse import DEFAULT_SPAN_SIZE, Reusable, Ztoc
from wrapper.soci.runner import Soci, unindexable_reason

log = logging.getLogger("wrapper.soci.prebuild")

IMAGE_PREFIX = "soci-wrapper.soci.prebuild/"
MAX_PARALLEL = 8  # soci create itself builds every layer of an image at once
# One layer's zTOC is sequential work (copy the layer, then inflate it once). One Go processor per soci keeps
# several of them on a small machine from spinning for work: measured on 2 cores, the default cost 1.3 CPU-s
# more per 300 MiB image and made the overlap a loss.
ONE_LAYER_ENV = {"GOMAXPROCS": "1"}
# A pull faster than this per CPU keeps the CPUs busy on its own (hashing, gRPC, containerd's writes): on 2 cores
# loopback pulls ran at 235-275 MiB/s (early builds a loss), an 800 Mbit/s link at ~90 MiB/s (a gain).
FAST_PULL_PER_CPU = 64 * 1024 * 1024  # bytes/s


def fast_pull_rate(cpus: int | None = None) -> float:
    """The pull rate (bytes/s) above which ``--overlap auto`` builds nothing early on this machine."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return float(FAST_PULL_PER_CPU * max(1, cpus))


class PullRate:
    """Bytes the pull has downloaded (of blobs stored or not yet), over the time since it began. Stored bytes
    would not do: layers downloading side by side are all stored at the end, and the first one in would make
    a fast pull look slow."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._began = clock()
        self._lock = threading.Lock()
        self.bytes = 0

    def add(self, count: int) -> None:
        with self._lock:
            self.bytes += count

    def per_second(self) -> float:
        return self.bytes / max(self._clock() - self._began, 0.05)


@dataclasses.dataclass(frozen=True)
class _Job:
    layer: Descriptor
    image: PlatformImage  # the first selected platform with this layer: its config and manifest media type


class Prebuilder:
    """Builds zTOCs for the layers of ``image`` as the pull stores them (``stored``); ``results`` waits for
    them after the pull. Use as a context manager: on exit every soci it started is stopped (killed if the run
    failed), its image records deleted and its lease ended."""

    def __init__(
        self,
        *,
        soci: Soci,
        client: ContainerdClient,
        work: Path,
        image: ResolvedImage,
        skip: frozenset[str] = frozenset(),
        span_size: int | None = None,
        min_layer_size: int,
        max_parallel: int | None = None,
        max_pull_rate: float | None = None,
    ) -> None:
        self._template = soci
        self._client = client
        self._work = work
        self._span_size = span_size
        self._min_layer_size = min_layer_size
        self._jobs: dict[str, _Job] = {}
        for sel in image.selected:
            for layer in sel.layers:
                if layer.digest in skip or layer.digest in self._jobs:
                    continue
                if unindexable_reason(layer.media_type, layer.size, min_layer_size) is None:
                    self._jobs[layer.digest] = _Job(layer, sel)
        self._stored: set[str] = set()
        self._max_rate = max_pull_rate
        self._rate = PullRate()  # made just before the pull starts (see wrapper.run.pipeline)
        self._declined: set[str] = set()
        self._started: dict[str, Future[Reusable | None]] = {}
        self._socis: list[Soci] = []
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_parallel or MAX_PARALLEL, thread_name_prefix="prebuild")
        self._stack = ExitStack()

    def __enter__(self) -> Prebuilder:
        if self._jobs:
            self._stack.enter_context(self._client.lease())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)

    # -- while the pull runs -------------------------------------------------------------------------------
    def stored(self, digest: str) -> None:
        """The pull has ``digest`` in containerd's content store (called from its transfer threads)."""
        with self._lock:
            if self._closed:
                return
            self._stored.add(digest)
            ready = [
                job
                for key, job in self._jobs.items()
                if key not in self._started
                and key not in self._declined
                and key in self._stored
                and job.image.config.digest in self._stored
            ]
            for job in ready:
                rate = self._rate.per_second()
                if self._max_rate is not None and rate > self._max_rate:
                    log.debug(
                        "the pull runs at %.0f MiB/s, over %.0f: layer %s is left to the run's soci call",
                        rate / 2**20,
                        self._max_rate / 2**20,
                        job.layer.digest,
                    )
                    self._declined.add(job.layer.digest)
                    continue
                self._started[job.layer.digest] = self._pool.submit(self._build, job)

    def downloaded(self, count: int) -> None:
        """``count`` more bytes of the image arrived (called from the pull's transfer threads)."""
        self._rate.add(count)

    @property
    def pending(self) -> int:
        """zTOCs being built (or queued) right now."""
        with self._lock:
            return sum(1 for fut in self._started.values() if not fut.done())

    # -- after the pull --------------------------------------------------------------------------------------
    def results(self) -> dict[str, Reusable]:
        """Wait for every zTOC started; those built, by layer digest. Layers that were never started, or whose
        build failed, are not in it: the run's own soci call builds them."""
        with self._lock:
            futures = dict(self._started)
        built: dict[str, Reusable] = {}
        for digest, fut in futures.items():
            try:
                result = fut.result()
            except Exception as exc:  # _build catches what soci does; this is a bug, not worth a failed run
                log.debug("early zTOC build for %s failed: %s", digest, exc, exc_info=True)
                continue
            if result is not None:
                built[digest] = result
        if len(built) < len(futures):
            # A build that failed because containerd died (its watchdog kills the soci that use it) must
            # not leave the run to start another soci against a dead daemon: this says it died (exit 6).
            self._client.version.get(timeout=10)
        return built

    def close(self, *, failed: bool = False) -> None:
        with self._lock:
            self._closed = True
            socis = list(self._socis)
        if failed:
            for fut in list(self._started.values()):
                fut.cancel()
            for soci in socis:
                soci.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for name in self._names:
            try:
                self._client.images.delete(name)
            except WrapperError as exc:
                log.debug("could not delete image record %s: %s", name, exc)
        self._stack.close()

    # -- one layer ---------------------------------------------------------------------------------------------
    def _build(self, job: _Job) -> Reusable | None:
        if self._closed:
            return None
        layer, image = job.layer, job.image
        hexdigest = layer.digest.removeprefix("sha256:")
        try:
            name = self._one_layer_image(job)
            soci = dataclasses.replace(
                self._template, root=self._work / hexdigest[:16] / "root", extra_env=ONE_LAYER_ENV
            )
            with self._lock:
                if self._closed:
                    return None
                self._socis.append(soci)
            seen: list[SociEvent] = []
            soci.create(
                name,
                platforms=[image.platform],
                span_size=self._span_size,
                min_layer_size=self._min_layer_size,
                on_event=seen.append,
            )
        except WrapperError as exc:
            log.debug("early zTOC of layer %s failed (the run's soci call builds it): %s", layer.digest, exc)
            return None
        made = next((e for e in seen if e.kind == "built" and e.digest == layer.digest), None)
        if made is None:
            log.debug("soci built no zTOC for layer %s early; soci said: %s", layer.digest, seen)
            return None
        path = soci.root / "content" / "blobs" / "sha256" / made.ztoc.removeprefix("sha256:")
        try:
            size = path.stat().st_size
        except OSError:
            log.debug("zTOC %s of layer %s is not in soci's store at %s", made.ztoc, layer.digest, path)
            return None
        ztoc = Ztoc(layer.digest, layer.media_type, self._span_size or DEFAULT_SPAN_SIZE, made.ztoc, size)
        log.debug("zTOC %s of layer %s built while the pull went on", made.ztoc, layer.digest)
        return Reusable(ztoc, path, "built")

    def _one_layer_image(self, job: _Job) -> str:
        """Store a manifest of the image's config and this one layer, and an image record naming it."""
        manifest = job.image.manifest
        doc = {
            "schemaVersion": 2,
            "mediaType": manifest.media_type,
            "config": job.image.config.to_oci(),
            "layers": [job.layer.to_oci()],
        }
        body = json.dumps(doc, sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._client.content.write(
            f"soci-wrapper-prebuild-{digest}",
            lambda offset: iter([body[offset:]]),
            total=len(body),
            expected=digest,
            labels=gc_labels(body),
        )
        name = IMAGE_PREFIX + job.layer.digest
        target = Descriptor(media_type=manifest.media_type, digest=digest, size=len(body))
        self._client.images.put(Image(name=name, target=target))
        with self._lock:
            self._names.append(name)
        return name

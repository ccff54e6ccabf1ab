"""Many images in one run (``soci-wrapper index REF REF ...``, ``--from-file``): one containerd for all (the
pipeline's Session), a few images at a time; one failing image does not stop the others."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wrapper.core.errors import ExitCode, UsageError, WrapperError
from wrapper.core.options import DaemonOptions, IndexRequest, RegistryOptions
from wrapper.core.progress import PrefixedReporter, QuietReporter, Reporter
from wrapper.core.report import IndexReport, Stages
from wrapper.run.pipeline import index_image, v1_note
from wrapper.run.session import Session, check_containerd
from wrapper.soci.binary import check_soci
from wrapper.soci.runner import kill_running_soci

log = logging.getLogger("wrapper.run.batch")

DEFAULT_MAX_CONCURRENT_IMAGES = 2  # benchmarks/: on 2 cores, soci's work is CPU-bound; see README


@dataclass
class ImageResult:
    """One image of a many-image run: its report, or the error that stopped it (with its exit code)."""

    image: str
    exit_code: int
    report: IndexReport | None = None
    error: str | None = None


@dataclass
class BatchReport:
    images: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # the run's, once (each image's are in its report)

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.exit_code != 0]

    def to_json(self) -> dict[str, Any]:
        statuses = [r.report.status for r in self.images if r.report is not None]
        return {
            "images": [
                {
                    "image": r.image,
                    "exit_code": r.exit_code,
                    "error": r.error,
                    **(r.report.to_json() if r.report else {}),
                }
                for r in self.images
            ],
            "summary": {
                "images": len(self.images),
                "indexed": statuses.count("indexed"),
                "already_indexed": statuses.count("already-indexed"),
                "not_an_image": statuses.count("not-an-image"),
                "failed": len(self.failed),
                "seconds": round(self.seconds, 3),
            },
            "stages": self.stages,
            "warnings": self.warnings,
        }


def run_index_many(
    requests: list[IndexRequest],
    registry_options: RegistryOptions,
    daemon_options: DaemonOptions,
    reporter: Reporter | None = None,
    *,
    max_concurrent_images: int = DEFAULT_MAX_CONCURRENT_IMAGES,
) -> BatchReport:
    """``soci-wrapper index REF REF ...``: every image with one containerd, a few at a time. One failing image
    does not stop the others; a blob two images share is stored once (containerd's content store)."""
    if max_concurrent_images < 1:
        raise UsageError("--max-concurrent-images must be at least 1")
    reporter = reporter or QuietReporter()
    soci_bin = check_soci(requests[0].soci_bin)
    check_containerd(daemon_options)
    started = time.monotonic()
    batch = BatchReport(images=[ImageResult(str(r.reference), 0) for r in requests])
    session_stages = Stages(reporter)

    def one(i: int, request: IndexRequest) -> None:
        prefix = f"[{i + 1}/{len(requests)} {request.reference.repository}] "
        stages = Stages(PrefixedReporter(reporter, prefix))
        try:
            batch.images[i].report = index_image(request, registry_options, session, soci_bin, stages)
        except WrapperError as exc:
            batch.images[i].exit_code = exc.exit_code
            batch.images[i].error = str(exc)
            reporter.warn(f"{prefix}failed: {exc}")
        except Exception as exc:  # one image's surprise must not end the others
            log.debug("image %s failed", request.reference, exc_info=True)
            batch.images[i].exit_code = ExitCode.UNEXPECTED
            batch.images[i].error = f"internal error: {type(exc).__name__}: {exc}"
            reporter.warn(f"{prefix}failed: {batch.images[i].error}")

    with Session(daemon_options, session_stages) as session:
        pool = ThreadPoolExecutor(max_concurrent_images, thread_name_prefix="image")
        try:
            for future in [pool.submit(one, i, r) for i, r in enumerate(requests)]:
                future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            kill_running_soci()  # then the session stops containerd: what is in flight fails at once
            raise
        pool.shutdown(wait=True)
    batch.seconds = time.monotonic() - started
    batch.stages = session_stages.seconds
    batch.warnings += v1_note([r.report for r in batch.images if r.report is not None], reporter)
    return batch

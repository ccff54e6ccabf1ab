"""The recorder of ``index --record-prefetch``: a start of the image, recorded, whose list of opened files
becomes the index's prefetch list.

``StartupRecorder`` is what wrapper.run.recording.PrefetchRecorder asks for (the pipeline holds it by that
Protocol; the command line and wrapper.api make it): it runs ``run_startup`` once, recording, and reports the
files in core's ``RecordedPrefetch``.

The recorded start is the ``full`` variant: every layer downloaded and unpacked into overlayfs, no
soci-snapshotter-grpc. That is the sound choice, and the fastest:

- the image has no index with prefetch yet (making one is the point), so a lazy start would either find none
  (the snapshotter then downloads and unpacks every layer itself: the same pull, behind one more daemon) or
  find an older index and record through FUSE, reading spans one round trip at a time: slower, same files;
- the recorder sees paths as the container opens them, whatever the root filesystem is made of, so the list
  is the same either way; overlayfs is what a node without SOCI runs, and needs nothing but containerd and runc;
- the snapshotter is not needed at all, so indexing does not start depending on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.core.models import Platform
from wrapper.core.progress import Reporter
from wrapper.core.reference import Reference
from wrapper.core.report import RecordedPrefetch
from wrapper.registry.client import RegistryClient
from wrapper.startup.container import Readiness
from wrapper.startup.daemon import check_can_run
from wrapper.startup.report import FULL
from wrapper.startup.run import StartupRequest, run_startup
from wrapper.startup.spec import Limits


@dataclass(frozen=True)
class StartupRecorder:
    """How the recorded start runs: the container's command (None: the image's Cmd), extra environment, when it
    counts as ready, its limits, and the containerd to start (always a private one, in namespaces of its own,
    whatever containerd the indexing uses)."""

    command: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    readiness: Readiness = field(default_factory=Readiness)
    limits: Limits = field(default_factory=Limits)
    containerd_bin: str = "containerd"
    namespace: str = "soci-wrapper"
    max_concurrent_downloads: int = 4

    def preflight(self) -> None:
        """Root, containerd, runc and its shim: a recording runs containers."""
        check_can_run(
            self.containerd_bin,
            what="--record-prefetch",
            root_hint="run as root, or record with `soci-wrapper startup --record FILE` where you can and "
            "pass FILE with --prefetch-files-json",
        )

    def startup_request(
        self, image: Reference, platform: Platform | None, record: Path | None
    ) -> StartupRequest:
        """One start of ``image`` with these settings, from a full pull, recording into ``record`` (the one a
        recording makes; ``startup`` takes it and sets its own variants)."""
        return StartupRequest(
            reference=image,
            command=self.command,
            env=self.env,
            readiness=self.readiness,
            record=record,
            baseline=False,
            lazy=False,
            platform=platform,
            limits=self.limits,
            containerd_bin=self.containerd_bin,
            namespace=self.namespace,
            max_concurrent_downloads=self.max_concurrent_downloads,
        )

    def record(
        self, registry: RegistryClient, image: Reference, platform: Platform, work: Path, reporter: Reporter
    ) -> RecordedPrefetch:
        started = time.monotonic()
        request = self.startup_request(image, platform, work / "prefetch.json")
        report = run_startup(request, registry, work, reporter)
        variant = report.variant(FULL)
        assert variant is not None, "a recording is one full start"
        return RecordedPrefetch(
            files=list(report.recorded or []),
            seconds=round(time.monotonic() - started, 3),
            platform=report.platform,
            image=str(image),
            args=report.args,
            readiness=report.readiness,
            pull_seconds=round(variant.pull_seconds, 3),
            ready_seconds=round(variant.ready_seconds, 3),
        )

"""``index --record-prefetch``: a start of the image is recorded, and the files it opened before it was ready
become the index's prefetch list, in the same run, before anything is pushed.

The seam between run/ and startup/, which sit side by side and may not import each other. The pipeline needs a
recorder; startup/ has one. So this module says what the pipeline needs of it, ``PrefetchRecorder``: a Protocol
over types of the layers below both (the registry client, a reference, a platform, a directory, a reporter),
whose result is core's ``RecordedPrefetch``. ``wrapper.startup.prefetch.StartupRecorder`` satisfies it, and
the layers above both compose them: the command line (``wrapper.cli``) and the library (``wrapper.api``) make
a StartupRecorder and hand it to ``run_index``. The pipeline runs a recording without knowing how a container
is started; startup/ knows nothing of indexing. (Moving startup's machinery down, or the pipeline's up, would
have broken one of the two rules: startup/ uses image/ and soci/, and run/ owns the run's lifetime.)

Where the recording sits in the stage: after resolve (and after the platforms with nothing to index are set
aside: a run that cannot index starts nothing), before the check for an existing index, which, with a prefetch
list, compares prefetch artifacts and so needs the list. With ``--from-oci``: once the image is pushed (the
recording pulls it from the registry like any image). The image is started by digest, so the start recorded
is of the image indexed even if its tag moves meanwhile. It runs on this machine, so of this machine's platform;
the list then goes to every platform indexed (a path a platform lacks is reported as in no indexed layer).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Protocol

from wrapper.core.errors import UsageError
from wrapper.core.models import Platform, PlatformImage, ResolvedImage
from wrapper.core.options import CappedPrefetch, IndexRequest, cap_prefetch_list, prefetch_path
from wrapper.core.progress import PrefixedReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.core.report import IndexReport, RecordedPrefetch, Stages
from wrapper.registry.client import RegistryClient
from wrapper.run.session import Session


class PrefetchRecorder(Protocol):
    """Starts an image and lists the files it opens before it is ready (see the module docstring)."""

    def preflight(self) -> None:
        """Before any network work: what a recording needs here (root, containerd); a WrapperError if not."""
        ...

    def record(
        self, registry: RegistryClient, image: Reference, platform: Platform, work: Path, reporter: Reporter
    ) -> RecordedPrefetch:
        """Start ``image`` (pinned by digest) of ``platform`` with ``registry``'s access, in ``work`` (the caller
        removes it), until ready; what it opened. Everything it started is stopped when it returns or raises."""
        ...


def recording_platform(image: ResolvedImage) -> PlatformImage:
    """The platform of ``image`` (among those to index) this machine can start: its own."""
    host = Platform.host()
    for selected in image.selected:
        if host.matches(selected.platform):
            return selected
    chosen = ", ".join(str(s.platform) for s in image.selected)
    raise UsageError(
        f"--record-prefetch starts the image on this machine ({host}), and the platforms to index ({chosen}) "
        "do not include it",
        hint=f"index {host} too (--platform), or record with `soci-wrapper startup --record FILE` on a machine "
        "of that platform and pass FILE with --prefetch-files-json",
    )


def merged_list(given: tuple[str, ...], recorded: list[str]) -> tuple[str, ...]:
    """The prefetch list of a run that has both: the files given (--prefetch-file, --prefetch-files-json), then
    the recorded ones not given already (as soci matches paths: cleaned, with or without a leading slash)."""
    seen = {prefetch_path(p) for p in given}
    out = list(given)
    for path in recorded:
        if (key := prefetch_path(path)) not in seen:
            seen.add(key)
            out.append(path)
    return tuple(out)


def record_prefetch(
    recorder: PrefetchRecorder,
    request: IndexRequest,
    registry: RegistryClient,
    image: ResolvedImage,
    report: IndexReport,
    session: Session,
    stages: Stages,
) -> IndexRequest:
    """Record a start of ``image`` and return ``request`` with the recorded files added to its prefetch list;
    ``report`` says what was recorded. The recording's directory is removed afterwards (its full pull of the
    image is of no use to the index) unless the run keeps its work directory."""
    target = recording_platform(image)
    pinned = image.reference.with_digest(image.digest)
    work = session.run_dir / "record"
    work.mkdir()
    try:
        with stages("record", f"starting {pinned} ({target.platform}) to list the files it opens"):
            recorded = recorder.record(
                registry, pinned, target.platform, work, PrefixedReporter(stages.reporter, "record: ")
            )
    finally:
        if not session.options.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    stages.reporter.info(
        f"    recorded {recorded.count} files opened before ready in {recorded.seconds:.2f} s"
    )
    report.recorded = recorded
    return capped_request(
        request, report, stages.reporter, merged_list(request.prefetch_files, recorded.files)
    )


def capped_request(
    request: IndexRequest, report: IndexReport, reporter: Reporter, merged: tuple[str, ...] | None = None
) -> IndexRequest:
    """``request`` with the prefetch list soci is given: ``merged`` (the given files, then the recorded ones;
    default: the given ones) under ``--prefetch-max-files`` (wrapper.core.options.cap_prefetch_list). What the
    cap leaves out is said once (a progress line: not with --quiet) and in the report's warnings and counts."""
    files = request.prefetch_files if merged is None else merged
    given = request.prefetch_files
    capped = cap_prefetch_list(given, files[len(given) :], request.prefetch_max_files)
    report.prefetch_files = len(capped.files)  # what soci is given
    report.prefetch_files_dropped = capped.dropped
    if capped.dropped:
        text = (
            f"the prefetch list has {len(files)} files, more than --prefetch-max-files "
            f"{request.prefetch_max_files}: {capped.dropped} left out ({_which_dropped(capped, len(given))}); "
            "soci v0.15.0 needs ~1.8 MB of memory per listed file (0: no cap)"
        )
        reporter.info(f"warning: {text}")
        report.warnings.append(text)
    return dataclasses.replace(request, prefetch_files=capped.files)


def _which_dropped(capped: CappedPrefetch, given: int) -> str:
    """Which files the cap kept, in words."""
    if capped.given_dropped:
        but = f", none of the {capped.recorded_dropped} recorded" if capped.recorded_dropped else ""
        return f"an even sample of the {given} given files kept, in their order{but}"
    first = f"the {given} given files kept, then " if given else ""
    return f"{first}an even sample of the recorded ones, in first-access order"

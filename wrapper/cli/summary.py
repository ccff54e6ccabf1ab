"""What the commands print on stdout when there is no ``--json``: a run's report as rich tables (or lines).

One renderer per report type, used by every command that has one: an index report (``index`` of one image,
``index --from-oci``), a many-image run, a verification (``verify``, ``index --verify``), a pull, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from wrapper.core.progress import human_size, short_digest

if TYPE_CHECKING:  # the run's modules are imported when a command runs, not for --help
    from wrapper.core.report import IndexReport, PlatformIndex
    from wrapper.run.batch import BatchReport
    from wrapper.run.doctor import DoctorReport
    from wrapper.verify.report import LayerResult, PlatformResult, VerifyReport


def _fields(title: str) -> Table:
    """A table of name/value rows."""
    table = Table(title=title, show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _times(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in stages.items())


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# -- index ---------------------------------------------------------------------------------------------------
def index_table(report: IndexReport, *, source: Path | None = None) -> Table:
    """One image's SOCI indexes; ``source``: the OCI layout the image came from (``--from-oci``)."""
    table = _fields("SOCI index")
    table.add_row("image", report.image)
    table.add_row("digest", report.digest)
    if source is not None:
        table.add_row("from", str(source))
    table.add_row("status", report.status)
    table.add_row("SOCI version", report.soci_version)
    table.add_row("platforms", ", ".join(report.platforms))
    if (recorded := report.recorded) is not None:
        table.add_row(
            "recorded",
            f"{count(recorded.count, 'file')} opened before ready by {' '.join(recorded.args)} "
            f"({recorded.platform}, {recorded.seconds:.1f} s); the prefetch list has {report.prefetch_files}",
        )
    for idx in report.indexes:
        table.add_row(f"index {idx.platform}", idx.soci_index_digest)
        if idx.ztocs or idx.layers_indexed or idx.layers_skipped:
            table.add_row("", _layers_line(idx))
        if prefetch := idx.prefetch_summary():
            table.add_row("", prefetch)
    for skip in report.not_indexed:
        table.add_row(f"no index {skip.platform}", skip.reason)
    if report.push and report.push.get("attempts", 1) > 1:
        table.add_row("push", f"{report.push['attempts']} attempts (transient registry errors retried)")
    if report.pushed_tag:
        table.add_row("pushed tag", f"{report.pushed_tag} ({report.output_digest or 'unchanged'})")
    table.add_row("time", _times(report.stages))
    if report.work_dir:
        table.add_row("work dir", report.work_dir)
    return table


def _layers_line(idx: PlatformIndex) -> str:
    indexed = sum(x.size for x in idx.layers_indexed)
    skipped = sum(x.size for x in idx.layers_skipped)
    reused = sum(1 for x in idx.layers if x.status == "reused")
    return (
        f"{count(idx.ztocs, 'zTOC')}; {count(len(idx.layers_indexed), 'layer')} indexed ({human_size(indexed)})"
        + (f", {reused} of them reused" if reused else "")
        + f", {len(idx.layers_skipped)} skipped ({human_size(skipped)})"
    )


def print_index(out: Console, err: Console, report: IndexReport, *, source: Path | None = None) -> None:
    """The report of ``index`` (a line on stderr when there was nothing to do)."""
    if report.status == "not-an-image":
        err.print(f"{report.image} is not an image to index ({report.reason}); nothing to do")
        return
    if report.status == "already-indexed":
        err.print(
            f"already indexed: {report.image} ({report.digest}); nothing to do (use --force to rebuild)"
        )
    out.print(index_table(report, source=source))


def print_batch(out: Console, batch: BatchReport) -> None:
    """Several images: a row per image, then how many were done."""
    table = Table(title=f"SOCI indexes: {len(batch.images)} images", box=None)
    for column in ("image", "result", "SOCI index digests"):
        table.add_column(column, overflow="fold")
    for result in batch.images:
        if result.report is None:
            table.add_row(result.image, f"failed (exit {result.exit_code})", result.error or "")
        else:
            digests = ", ".join(f"{i.platform} {i.soci_index_digest}" for i in result.report.indexes)
            table.add_row(result.image, result.report.status, digests or result.report.reason or "")
    out.print(table)
    out.print(
        f"{len(batch.images) - len(batch.failed)} of {len(batch.images)} images done in {batch.seconds:.1f} s"
    )


# -- verify --------------------------------------------------------------------------------------------------
def print_verify(out: Console, report: VerifyReport) -> None:
    """The verification: the verdict, then per platform a row per layer and level, then the problems."""
    summary = _fields("SOCI index verification")
    summary.add_row("image", report.image)
    summary.add_row("digest", report.digest)
    summary.add_row("status", report.status)
    for level, state in report.levels.items():
        summary.add_row(f"{level} level", state)
    summary.add_row("time", _times(report.stages))
    out.print(summary)
    for platform in report.platforms:
        out.print(_platform_table(platform), highlight=False)
    for title, lines in (("problems:", report.problems()), ("warnings:", report.warnings())):
        if lines:
            out.print(title, style="bold")
        for line in lines:
            out.print(f"  - {line}", highlight=False, markup=False)
    out.print(report.summary(), highlight=False, markup=False)


def _platform_table(platform: PlatformResult) -> Table:
    if platform.found:
        title = (
            f"{platform.platform}: SOCI index {platform.soci_version} {platform.index_digest} "
            f"(found through the {platform.discovered_via})"
        )
        if platform.fuse_mounts is not None:
            title += f"; {platform.fuse_mounts} FUSE mounts"
        if platform.lazy_by_default is False:
            title += "; not lazy with the snapshotter's default pull modes"
    else:
        title = f"{platform.platform}: no SOCI index (manifest {platform.manifest_digest})"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for name in ("layer", "size", "zTOC", "registry", "content", "consumer", "notes"):
        table.add_column(name, overflow="fold")
    for layer in platform.layers:
        table.add_row(
            short_digest(layer.digest),
            human_size(layer.size),
            short_digest(layer.ztoc) if layer.ztoc else "-",
            _mark(layer, "registry"),
            _mark(layer, "content"),
            _mark(layer, "consumer"),
            "; ".join(_notes(platform, layer)),
        )
    return table


def _mark(layer: LayerResult, level: str) -> str:
    checks = [c for c in layer.checks if c.level == level]
    if not checks:
        return "-"
    return "ok" if all(c.ok for c in checks) else "FAILED"


def _notes(platform: PlatformResult, layer: LayerResult) -> list[str]:
    notes = []
    if platform.found and not layer.covered:
        notes.append(layer.covered_reason or "no zTOC")
    if layer.files_compared:
        notes.append(f"{layer.files_compared} files compared")
    if layer.lazy:
        notes.append(f"lazy, {layer.files_read_lazily} files read via FUSE")
    failed = [c.name for c in layer.checks if not c.ok]
    if failed:
        notes.append("failed: " + ", ".join(dict.fromkeys(failed)))
    return notes


# -- pull, doctor --------------------------------------------------------------------------------------------
def pull_line(summary: dict[str, object]) -> str:
    """``pull``'s one line, from PullResult.summary()."""
    fetched, skipped, present = (
        _blobs(summary, k) for k in ("blobs_fetched", "blobs_skipped", "blobs_present")
    )
    platforms = summary["platforms"]
    assert isinstance(platforms, list)
    return (
        f"pulled {summary['image']} ({summary['digest']}) for {', '.join(map(str, platforms))}: "
        f"{fetched[0]} blobs fetched ({human_size(fetched[1])}), {skipped[0]} skipped ({human_size(skipped[1])}), "
        f"{present[0]} already present, in {summary['seconds']:.1f} s"
    )


def _blobs(summary: dict[str, object], key: str) -> tuple[int, int]:
    value = summary[key]
    assert isinstance(value, dict)
    return int(value["count"]), int(value["bytes"])


def doctor_lines(report: DoctorReport) -> list[str]:
    lines = []
    for check in report.checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        lines.append(f"{mark} {check.name}: {check.detail}")
        if check.fix and not check.ok:
            lines.append(f"     fix: {check.fix}")
        if check.name in report.looked:
            lines.append(f"     looked: {report.looked[check.name].describe()}")
    return lines

"""Progress on screen: rich bars on a terminal, plain lines otherwise (the ``Reporter`` the command line
hands to a run)."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from wrapper.core.progress import QuietReporter, Reporter, human_size, short_digest


@dataclass
class _Steps:
    label: str
    total: int | None
    done: int
    started: float


@dataclass
class _Blob:
    label: str
    total: int
    done: int
    started: float


class PlainReporter(QuietReporter):
    """Not a terminal (CI logs): one line per stage, and per blob started and finished."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._lock = threading.Lock()
        self._blobs: dict[str, _Blob] = {}
        self._steps: dict[str, _Steps] = {}

    def _line(self, text: str) -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)

    def stage(self, name: str, detail: str = "") -> None:
        self._line(f"==> {name}" + (f": {detail}" if detail else ""))

    def info(self, message: str) -> None:
        self._line(message)

    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None:
        with self._lock:
            self._blobs[digest] = _Blob(label, total, offset, time.monotonic())
        resumed = f", resuming at {human_size(offset)}" if offset else ""
        self._line(f"    start  {label} {short_digest(digest)} ({human_size(total)}{resumed})")

    def blob_advanced(self, digest: str, nbytes: int) -> None:
        with self._lock:
            blob = self._blobs.get(digest)
            if blob:
                blob.done += nbytes

    def blob_finished(self, digest: str, note: str = "") -> None:
        with self._lock:
            blob = self._blobs.pop(digest, None)
        if blob is None:
            self._line(f"    {note or 'done'}  {short_digest(digest)}")
            return
        secs = max(time.monotonic() - blob.started, 1e-6)
        rate = human_size(blob.total / secs) + "/s"
        extra = f" [{note}]" if note else ""
        self._line(
            f"    done   {blob.label} {short_digest(digest)} {human_size(blob.total)}"
            f" in {secs:.1f} s ({rate}){extra}"
        )

    def steps_started(self, key: str, label: str, total: int | None = None) -> None:
        with self._lock:
            self._steps[key] = _Steps(label, total, 0, time.monotonic())
        self._line(f"    {label}" + (f" ({total} to go)" if total else ""))

    def _advance(self, key: str) -> str:
        """Count one step of ``key``; returns its position as ``[n/total]`` (or ``[n]``)."""
        with self._lock:
            steps = self._steps.get(key)
            if steps is None:
                return ""
            steps.done += 1
            return f"[{steps.done}/{steps.total}]" if steps.total else f"[{steps.done}]"

    def step(self, key: str, message: str) -> None:
        position = self._advance(key)
        self._line(f"    {position} {message}" if position else f"    {message}")

    def steps_finished(self, key: str, summary: str = "") -> None:
        with self._lock:
            steps = self._steps.pop(key, None)
        if steps is not None:
            secs = time.monotonic() - steps.started
            self._line(f"    {steps.label}: {summary or 'done'} in {secs:.1f} s")


class RichReporter(PlainReporter):
    """A terminal: a bar per blob (bytes, rate) and a total bar; a spinner with a count and the elapsed time
    for soci's work. Only one live display at a time: a new stage (or the other kind) closes the old one."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        super().__init__(self._console.file)  # type: ignore[arg-type]
        self._progress: Progress | None = None
        self._kind = ""
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None

    def _line(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False)

    def _live(self, kind: str) -> Progress:
        """The live display for ``kind`` ("blobs" or "steps"), started if needed. Call with the lock held."""
        if self._progress is not None and self._kind == kind:
            return self._progress
        self._stop_live()
        if kind == "blobs":
            columns: tuple[ProgressColumn, ...] = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
        else:
            columns = (
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
        self._progress = Progress(*columns, console=self._console, transient=True)
        self._kind = kind
        self._progress.start()
        return self._progress

    def _stop_live(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._kind = ""
        self._tasks.clear()
        self._total = None

    def stage(self, name: str, detail: str = "") -> None:
        with self._lock:
            self._stop_live()  # the previous stage's bars go before the next stage's line
        self._console.print(
            f"[bold cyan]==>[/] [bold]{name}[/]" + (f": {detail}" if detail else ""), highlight=False
        )

    def warn(self, message: str) -> None:
        self._console.print(f"[yellow]warning:[/] {message}", highlight=False)

    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None:
        with self._lock:
            progress = self._live("blobs")
            if self._total is None:
                self._total = progress.add_task("total", total=0)
            progress.update(self._total, total=(progress.tasks[self._total].total or 0) + total)
            progress.advance(self._total, offset)
            self._tasks[digest] = progress.add_task(
                f"{label} {short_digest(digest)}", total=total, completed=offset
            )

    def blob_advanced(self, digest: str, nbytes: int) -> None:
        with self._lock:
            progress, task, total = self._progress, self._tasks.get(digest), self._total
        if progress is None or self._kind != "blobs":
            return
        if task is not None:
            progress.advance(task, nbytes)
        if total is not None:
            progress.advance(total, nbytes)

    def blob_finished(self, digest: str, note: str = "") -> None:
        with self._lock:
            task = self._tasks.pop(digest, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)

    def steps_started(self, key: str, label: str, total: int | None = None) -> None:
        with self._lock:
            self._steps[key] = _Steps(label, total, 0, time.monotonic())
            progress = self._live("steps")
            self._tasks[key] = progress.add_task(label, total=total)

    def step(self, key: str, message: str) -> None:
        position = self._advance(key)
        with self._lock:
            task = self._tasks.get(key)
            if task is not None and self._progress is not None:
                self._progress.advance(task, 1)
                self._progress.refresh()  # the count under the new line, not the last snapshot
        self._line(f"    {position} {message}" if position else f"    {message}")

    def steps_finished(self, key: str, summary: str = "") -> None:
        with self._lock:
            steps = self._steps.pop(key, None)
            task = self._tasks.pop(key, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)
        if steps is not None:
            secs = time.monotonic() - steps.started
            self._line(f"    {steps.label}: {summary or 'done'} in {secs:.1f} s")

    def close(self) -> None:
        with self._lock:
            self._stop_live()


def make_reporter(
    *, quiet: bool = False, console: Console | None = None, force_plain: bool = False
) -> Reporter:
    """Pick the reporter for this run: quiet, rich bars (on a terminal, without NO_COLOR) or plain lines."""
    if quiet:
        return QuietReporter()
    interactive = sys.stdout.isatty() and sys.stderr.isatty()  # piped into a log: plain lines
    if not force_plain and interactive and not os.environ.get("NO_COLOR"):
        return RichReporter(console)
    return PlainReporter()

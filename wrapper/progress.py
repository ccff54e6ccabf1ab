"""Progress display: rich bars on a terminal, plain lines otherwise, nothing with --quiet.

All output goes to stderr, so that stdout carries only the result (the summary, or ``--json``).
The pull calls these from several threads at once; every implementation is thread-safe.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class Reporter(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None: ...
    def blob_advanced(self, digest: str, nbytes: int) -> None: ...
    def blob_finished(self, digest: str, note: str = "") -> None: ...
    def close(self) -> None: ...


class QuietReporter:
    """--quiet: warnings only."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self._stream, flush=True)

    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None:
        pass

    def blob_advanced(self, digest: str, nbytes: int) -> None:
        pass

    def blob_finished(self, digest: str, note: str = "") -> None:
        pass

    def close(self) -> None:
        pass


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


class RichReporter(PlainReporter):
    """A terminal: a bar per blob (bytes, rate) and a total bar."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        super().__init__(self._console.file)  # type: ignore[arg-type]
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None
        self._started = False

    def _line(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False)

    def stage(self, name: str, detail: str = "") -> None:
        self._console.print(
            f"[bold cyan]==>[/] [bold]{name}[/]" + (f": {detail}" if detail else ""), highlight=False
        )

    def warn(self, message: str) -> None:
        self._console.print(f"[yellow]warning:[/] {message}", highlight=False)

    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None:
        with self._lock:
            if not self._started:
                self._progress.start()
                self._started = True
            if self._total is None:
                self._total = self._progress.add_task("total", total=0)
            self._progress.update(self._total, total=(self._progress.tasks[self._total].total or 0) + total)
            self._progress.advance(self._total, offset)
            self._tasks[digest] = self._progress.add_task(
                f"{label} {short_digest(digest)}", total=total, completed=offset
            )

    def blob_advanced(self, digest: str, nbytes: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._progress.advance(task, nbytes)
        if self._total is not None:
            self._progress.advance(self._total, nbytes)

    def blob_finished(self, digest: str, note: str = "") -> None:
        with self._lock:
            task = self._tasks.pop(digest, None)
        if task is not None:
            self._progress.remove_task(task)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


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

"""Progress display: rich bars on a terminal, plain lines otherwise, nothing with --quiet.

All output goes to stderr, so that stdout carries only the result (the summary, or ``--json``).
The pull calls these from several threads at once; every implementation is thread-safe.

Two kinds of progress: bytes of blobs (``blob_*``: pull and push), and counted steps of work that is not
measured in bytes (``steps_*``: the layers ``soci create`` or ``soci convert`` goes through, the artifacts
``soci push`` sends). A new stage closes whatever the previous stage left on screen.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


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
    def steps_started(self, key: str, label: str, total: int | None = None) -> None: ...
    def step(self, key: str, message: str) -> None: ...
    def steps_finished(self, key: str, summary: str = "") -> None: ...
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

    def steps_started(self, key: str, label: str, total: int | None = None) -> None:
        pass

    def step(self, key: str, message: str) -> None:
        pass

    def steps_finished(self, key: str, summary: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class PrefixedReporter:
    """One image's progress among several in flight: every line it prints starts with ``prefix``, and its
    blob and step keys are its own. Wraps a plain (or quiet) reporter; bars of several images at once would
    only fight over the terminal."""

    def __init__(self, inner: Reporter, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix

    def stage(self, name: str, detail: str = "") -> None:
        self._inner.info(f"{self._prefix}==> {name}" + (f": {detail}" if detail else ""))

    def info(self, message: str) -> None:
        self._inner.info(f"{self._prefix}{message.strip()}")

    def warn(self, message: str) -> None:
        self._inner.warn(f"{self._prefix}{message}")

    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None:
        self._inner.blob_started(f"{self._prefix}{digest}", f"{self._prefix}{label}", total, offset)

    def blob_advanced(self, digest: str, nbytes: int) -> None:
        self._inner.blob_advanced(f"{self._prefix}{digest}", nbytes)

    def blob_finished(self, digest: str, note: str = "") -> None:
        self._inner.blob_finished(f"{self._prefix}{digest}", note)

    def steps_started(self, key: str, label: str, total: int | None = None) -> None:
        self._inner.steps_started(f"{self._prefix}{key}", f"{self._prefix}{label}", total)

    def step(self, key: str, message: str) -> None:
        self._inner.step(f"{self._prefix}{key}", f"{self._prefix}{message}")

    def steps_finished(self, key: str, summary: str = "") -> None:
        self._inner.steps_finished(f"{self._prefix}{key}", summary)

    def close(self) -> None:
        pass  # the inner reporter is closed by its owner

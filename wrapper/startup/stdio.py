"""The container's standard output and error: named pipes (FIFOs) that the runc shim writes into.

Made before the task exists (the shim opens them by path) and read from the start: a read end opened with
O_NONBLOCK needs no writer yet, and poll() only reports the end of a stream once a writer has come and gone.
Each complete line goes to ``on_line`` (for ``--ready-log``); the last lines are kept for error messages.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

from wrapper.containerd.tasks import TaskIO

_READ_BYTES = 65536
_POLL_MS = 100
_TAIL_LINES = 20
_MAX_LINE = 1 << 16  # a longer "line" is handed over in pieces


class OutputPipes:
    """stdout and stderr FIFOs in ``directory``, read by a thread from ``open()`` until ``close()``."""

    def __init__(self, directory: Path, on_line: Callable[[str, str], None] | None = None) -> None:
        self.directory = directory
        self.on_line = on_line
        self.paths = {name: directory / name for name in ("stdout", "stderr")}
        self.bytes = {name: 0 for name in self.paths}
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._partial = {name: b"" for name in self.paths}
        self._fds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def task_io(self) -> TaskIO:
        return TaskIO(stdout=str(self.paths["stdout"]), stderr=str(self.paths["stderr"]))

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, path in self.paths.items():
            os.mkfifo(path, 0o600)
            self._fds[os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)] = name
        self._thread = threading.Thread(target=self._read, name="startup-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        poller = select.poll()
        for fd in self._fds:
            poller.register(fd, select.POLLIN | select.POLLHUP)
        live = set(self._fds)
        while live and not self._stop.is_set():
            for fd, events in poller.poll(_POLL_MS):
                if fd in live and not self._drain(fd) and events & select.POLLHUP:
                    poller.unregister(fd)
                    live.discard(fd)
        for fd in live:  # told to stop: what is already in the pipes still counts
            self._drain(fd)
        for name in self._partial:
            self._emit(name, b"", final=True)

    def _drain(self, fd: int) -> bool:
        """Read what is there; whether anything was."""
        got = False
        while True:
            try:
                data = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                return got
            except OSError:
                return got
            if not data:
                return got
            got = True
            self._emit(self._fds[fd], data)

    def _emit(self, name: str, data: bytes, *, final: bool = False) -> None:
        with self._lock:
            self.bytes[name] += len(data)
            buffer = self._partial[name] + data
            *lines, rest = buffer.split(b"\n")
            if final and rest:
                lines, rest = [*lines, rest], b""
            while len(rest) > _MAX_LINE:
                lines.append(rest[:_MAX_LINE])
                rest = rest[_MAX_LINE:]
            self._partial[name] = rest
            texts = [line.decode(errors="replace").rstrip("\r") for line in lines]
            self._tail.extend(f"{name}: {t}" for t in texts)
        if self.on_line is not None:
            for text in texts:
                self.on_line(name, text)

    def tail(self) -> str:
        """The last lines of output (``stdout: …`` / ``stderr: …``)."""
        with self._lock:
            return "\n".join(self._tail)

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading (after what is left in the pipes, or ``timeout``), close and remove the FIFOs."""
        if self._thread is not None:
            self._thread.join(timeout)
            self._stop.set()
            self._thread.join()
            self._thread = None
        for fd in list(self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

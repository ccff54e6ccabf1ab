"""``--record FILE``: the files a container opens before it is ready, for soci's ``--prefetch-files-json``.

fanotify(7), through libc: a notification group marks the container's root filesystem (the overlay the runc
shim mounted, reached from the host through the sandbox) with ``FAN_MARK_FILESYSTEM``, for ``FAN_OPEN`` and
``FAN_OPEN_EXEC``. A filesystem mark (unlike a mount mark) sees opens made through every mount of that
overlay, so also through the container's own copy of it in its mount namespace, after its pivot_root. Each
event carries a file descriptor of the opened file; ``/proc/self/fd/N`` names it as the container sees it
(``/bin/busybox``: the container's mount is not reachable from our root, so the kernel names the path from
the root of that mount). Directories, devices and files deleted since are left out; each path is kept once,
in the order of first access.

Marking starts after Tasks.Create (runc has set the container up, its program has not run) and ends when
the container is ready: the list is what the program opened on its way to ready, the exec'd binary and its
libraries included.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import stat
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_NOTIF, FAN_UNLIMITED_QUEUE = 0x1, 0x2, 0x0, 0x10
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_OPEN, FAN_OPEN_EXEC, FAN_Q_OVERFLOW = 0x20, 0x1000, 0x4000
AT_FDCWD = -100
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_BUFFER = 64 * 1024
_POLL_MS = 100
_DELETED = " (deleted)"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


class RecorderError(OSError):
    """fanotify could not be set up (no root, an old kernel, a filesystem it cannot mark)."""


def _fail(what: str) -> RecorderError:
    code = ctypes.get_errno()
    return RecorderError(code, f"{what}: {os.strerror(code)}")


def parse_events(buffer: bytes) -> list[tuple[int, int, int]]:
    """The (mask, fd, pid) of each fanotify event in ``buffer`` (what one read() returned)."""
    events = []
    offset = 0
    while offset + _METADATA.size <= len(buffer):
        length, _vers, _reserved, _meta_len, mask, fd, pid = _METADATA.unpack_from(buffer, offset)
        if length < _METADATA.size:
            break
        events.append((mask, fd, pid))
        offset += length
    return events


class OpenedFiles:
    """Paths in first-access order, each once (the recorder's list)."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def add(self, path: str) -> None:
        if path.startswith("/") and not path.endswith(_DELETED):
            self._seen.setdefault(path, None)

    def paths(self) -> list[str]:
        return list(self._seen)


class FanotifyRecorder:
    """Records the regular files opened on the filesystem of a root directory (see the module docstring)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._files = OpenedFiles()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.overflowed = False
        self.events = 0

    def start(self, rootfs: Path) -> None:
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
        fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            raise _fail("fanotify_init")
        mask = FAN_OPEN | FAN_OPEN_EXEC
        if (
            _libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, os.fsencode(rootfs))
            != 0
        ):
            error = _fail(f"fanotify_mark of {rootfs}")
            os.close(fd)
            raise error
        self._fd = fd
        self._thread = threading.Thread(target=self._read, name="startup-recorder", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if poller.poll(_POLL_MS):
                self._drain()
        self._drain()

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                buffer = os.read(self._fd, _BUFFER)
            except BlockingIOError:
                return
            if not buffer:
                return
            for mask, fd, _pid in parse_events(buffer):
                self.events += 1
                if mask & FAN_Q_OVERFLOW:
                    self.overflowed = True
                if fd >= 0:
                    self._take(fd)

    def _take(self, fd: int) -> None:
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                self._files.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError as exc:
            log.debug("recorder: event fd %d: %s", fd, exc)
        finally:
            os.close(fd)

    def stop(self) -> list[str]:
        """Stop watching (after the events already queued); the paths, in first-access order."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self.overflowed:
            log.warning(
                "the recorder's event queue overflowed: some opened files may be missing from the list"
            )
        return self._files.paths()


def write_prefetch_list(path: Path, files: Sequence[str]) -> None:
    """``files`` as soci's ``--prefetch-files-json`` reads them: a JSON array of paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(files), indent=2) + "\n")

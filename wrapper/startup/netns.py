"""Is a TCP port accepting inside the container's own network namespace (``--ready-port``)?

The container has a network namespace of its own with only loopback, so its port cannot be reached from the
host. A thread of ours enters that namespace (setns(2) moves only the calling thread) and connects to
127.0.0.1:PORT there, again and again, until a connection is accepted or it is told to stop. The thread never
goes back: it ends with the probe, and the namespace stays the container's business.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: Path) -> None:
    """Move the calling thread into the network namespace at ``path`` (``/proc/PID/ns/net``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns into {path}: {os.strerror(code)}")
    finally:
        os.close(fd)


def accepts(port: int, timeout: float = 0.5) -> bool:
    """One attempt: does 127.0.0.1:PORT (of the calling thread's namespace) accept a connection?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
        except (ConnectionRefusedError, TimeoutError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET):
                return False
            raise
        return True


class PortProbe(threading.Thread):
    """Connects to ``port`` in the namespace at ``netns`` every ``interval`` s; calls ``on_ready`` once the
    port accepts, ``on_error`` if the namespace cannot be entered (the process is gone)."""

    def __init__(
        self,
        netns: Path,
        port: int,
        on_ready: Callable[[], None],
        on_error: Callable[[str], None],
        *,
        interval: float = 0.02,
    ) -> None:
        super().__init__(name=f"startup-port-{port}", daemon=True)
        self.netns, self.port, self.interval = netns, port, interval
        self.on_ready, self.on_error = on_ready, on_error
        self._halted = threading.Event()

    def halt(self) -> None:
        self._halted.set()

    def run(self) -> None:
        try:
            enter_netns(self.netns)
        except OSError as exc:
            self.on_error(f"cannot enter the container's network namespace: {exc.strerror or exc}")
            return
        while not self._halted.is_set():
            try:
                if accepts(self.port):
                    self.on_ready()
                    return
            except OSError as exc:
                self.on_error(f"connecting to port {self.port} in the container: {exc.strerror or exc}")
                return
            self._halted.wait(self.interval)

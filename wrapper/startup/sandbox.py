"""The namespaces a start-up run lives in (see nsinit.py): made first, entered by every daemon, ended last.

containerd, its shims, runc's containers and soci-snapshotter-grpc all run in one private mount namespace
and one PID namespace. They see each other's mounts (the snapshotter's FUSE mounts below containerd's
overlays, which the host does not see), containerd's fixed /run/containerd is a tmpfs of the run's own, and
when the namespace's init ends, the kernel kills whatever is still inside: no shim, container or mount
survives the run, however it ends.

From the host, a path inside is reached through ``/proc/<init>/root`` (``Sandbox.path``), and a pid inside is
one of the namespace's (``/proc/<init>/root/proc/<pid>``).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from wrapper.core.errors import ContainerdError
from wrapper.system.supervisor import Child, supervisor

log = logging.getLogger(__name__)

NSINIT = Path(__file__).with_name("nsinit.py")
# containerd keeps shim sockets (1.6 and 2.x: /run/containerd/s) and runc's state (/run/containerd/runc)
# there, whatever its config says.
PRIVATE_TMPFS = ("/run/containerd",)
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def script(*args: str) -> list[str]:
    """The command line of nsinit.py: this Python, isolated, without site-packages."""
    return [sys.executable, "-I", "-S", str(NSINIT), *args]


class Sandbox:
    """The private PID and mount namespaces of one run; ``work_dir`` holds the init's pid file."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._proc: Child | None = None
        self._init_pid: int | None = None

    @property
    def init_pid(self) -> int:
        """The namespace's init, as the host sees it."""
        if self._init_pid is None:
            raise ContainerdError("the start-up sandbox has not been started")
        return self._init_pid

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.work_dir / "init.pid"
        argv = script("hold", str(pid_file), *(a for d in PRIVATE_TMPFS for a in ("--tmpfs", d)))
        try:
            # The supervisor ties it to this process's life: if soci-wrapper is killed, so is the namespaces'
            # init, and with it everything inside.
            self._proc = supervisor().start(
                argv, name="start-up namespaces", log_file=self.work_dir / "nsinit.log"
            )
        except OSError as exc:
            self.stop()
            raise ContainerdError(f"cannot start the start-up namespaces: {exc.strerror or exc}") from None
        deadline = time.monotonic() + _START_TIMEOUT
        while not pid_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = _last_lines(self.work_dir / "nsinit.log")
                self.stop()
                raise ContainerdError(
                    "cannot make the private PID and mount namespaces that containers run in"
                    + (f": {tail.splitlines()[-1]}" if tail else ""),
                    hint="this needs root (CAP_SYS_ADMIN)",
                    detail=tail or None,
                )
            time.sleep(0.01)
        self._init_pid = int(pid_file.read_text().strip())
        log.debug("start-up namespaces: init %s", self._init_pid)

    def launcher(self) -> list[str]:
        """The command prefix that runs a program inside the namespaces (its parent forwards signals)."""
        return script("join", str(self.init_pid), "--")

    def path(self, inside: str | Path) -> Path:
        """A path of the namespace's mount tree, reachable from the host."""
        return Path(f"/proc/{self.init_pid}/root") / str(inside).lstrip("/")

    def proc(self, pid: int) -> Path:
        """``/proc/<pid>`` of a process of the namespace (``pid`` as containerd reports it)."""
        return self.path(f"/proc/{pid}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """End the namespaces: their init stops, and the kernel kills whatever is left inside."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(_STOP_TIMEOUT)
        self._init_pid = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _last_lines(path: Path, count: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-count:])
    except OSError:
        return ""

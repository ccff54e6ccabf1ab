"""The process supervisor's interface, for the boundary clients that start programs (containerd's daemon).

The supervisor itself (``wrapper.system.supervisor``) sits beside ``wrapper.containerd`` and
``wrapper.registry``, and boundary clients do not import one another: so ``wrapper.containerd.daemon`` is
given a supervisor (``ManagedContainerd(processes=...)``), or takes the process-wide one installed here
when ``wrapper.system`` is imported (``wrapper/__init__.py`` does that, so it always is).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

Stream = int | IO[Any] | None


class ChildProcess(Protocol):
    """A program the supervisor started, in a process group of its own, tied to this process's life."""

    @property
    def pid(self) -> int: ...

    @property
    def argv(self) -> tuple[str, ...]: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        ...

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM to its group, up to ``timeout`` s for it to exit, SIGKILL to the group, reaped; True if it
        had to be killed (``timeout`` 0: SIGKILL at once)."""
        ...


class Processes(Protocol):
    """What the boundary clients need of the supervisor."""

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        stdout: Stream = subprocess.DEVNULL,
        stderr: Stream = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
    ) -> ChildProcess: ...

    def run(
        self, argv: Sequence[str], *, name: str, timeout: float, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command to its end, its output captured as text (a ``--version``)."""
        ...

    def stop_users(self, needle: str) -> list[int]:
        """Kill (with their groups) the children whose command line has the argument ``needle``."""
        ...

    def find_program(
        self, name: str, *, explicit: str | None = None, env_var: str | None = None
    ) -> str | None: ...

    def own(self, path: Path, *, keep: bool = False, run_dir: bool = False) -> None:
        """Undo ``path`` (its mounts; the tree, unless ``keep``) if this process dies before it does."""
        ...

    def release(self, path: Path, *, remove: bool = False) -> None:
        """``path`` is no longer this process's to clean up after (``remove``: remove it now)."""
        ...


_installed: list[Callable[[], Processes]] = []


def install(provider: Callable[[], Processes]) -> None:
    """Called once by ``wrapper.system.supervisor``: where ``processes()`` finds the supervisor."""
    _installed[:] = [provider]


def processes() -> Processes:
    """The process-wide supervisor."""
    if not _installed:
        raise RuntimeError("no process supervisor: import wrapper.system.supervisor first")
    return _installed[0]()

"""One container, run until it is ready, then stopped and removed: containerd's Containers and Tasks APIs.

    Containers.Create (the runtime spec) -> Tasks.Create (the root filesystem's mounts, stdout/stderr FIFOs:
    runc create) -> [recorder marks the root filesystem] -> Tasks.Wait, Tasks.Start -> ready -> Tasks.Kill
    -> Tasks.Delete -> Containers.Delete

Ready means (``Readiness``): the process exited with status 0 (the default); a line of its output matched
``--ready-log``; or ``--ready-port`` accepted a connection inside the container's network namespace. Not
ready within the timeout, or an exit before it (any exit with a status other than 0), is a StartupError with
the end of its output. Whatever happens, ``close()`` leaves no task, container or FIFO behind.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.containers import Container
from wrapper.containerd.mounts import Mount
from wrapper.containerd.tasks import Exit, Waiter
from wrapper.core.errors import NotFoundError, StartupError, WrapperError
from wrapper.startup.netns import PortProbe
from wrapper.startup.sandbox import Sandbox
from wrapper.startup.stdio import OutputPipes

log = logging.getLogger(__name__)

ReadyMode = Literal["exit", "log", "port"]
_KILL_WAIT = 10.0


@dataclass(frozen=True)
class Readiness:
    """When the container counts as started (see the module docstring); ``timeout`` in seconds."""

    mode: ReadyMode = "exit"
    pattern: re.Pattern[str] | None = None
    port: int | None = None
    timeout: float = 120.0

    def describe(self) -> str:
        if self.mode == "log" and self.pattern is not None:
            return f"a line of its output matches {self.pattern.pattern!r}"
        if self.mode == "port":
            return f"port {self.port} accepts connections in its network namespace"
        return "it exits with status 0"


class Recorder(Protocol):
    """What watches the root filesystem from the task's creation until the container is ready."""

    def start(self, rootfs: Path) -> None: ...

    def stop(self) -> list[str]: ...


@dataclass
class Outcome:
    """Times in seconds from Containers.Create: the task created, started, ready."""

    created: float
    started: float
    ready: float
    exit_status: int | None  # when it had exited by then
    recorded: list[str] | None = None


class ContainerRun:
    """The container ``container_id`` of ``spec`` on ``rootfs`` (an active snapshot of ``snapshotter``)."""

    def __init__(
        self,
        client: ContainerdClient,
        sandbox: Sandbox,
        *,
        container_id: str,
        spec: dict[str, Any],
        rootfs: list[Mount],
        snapshotter: str,
        snapshot_key: str,
        image: str,
        state_dir: Path,
        work_dir: Path,
        readiness: Readiness,
        recorder: Recorder | None = None,
    ) -> None:
        self.client = client
        self.sandbox = sandbox
        self.id = container_id
        self.spec = spec
        self.rootfs = rootfs
        self.snapshotter, self.snapshot_key, self.image = snapshotter, snapshot_key, image
        # Where the shim mounts the root filesystem: the task's bundle in containerd's state directory.
        self.bundle_rootfs = (
            state_dir / "io.containerd.runtime.v2.task" / client.namespace / container_id / "rootfs"
        )
        self.readiness = readiness
        self.recorder = recorder
        self._ready = threading.Event()
        self._ready_at: float | None = None
        self._failure: str | None = None
        self._exit: Exit | None = None
        self._exit_at: float | None = None
        self._lock = threading.Lock()
        pattern = readiness.pattern if readiness.mode == "log" else None
        self.output = OutputPipes(work_dir / "io", self._line if pattern is not None else None)
        self._container = False
        self._task = False
        self._waiter: Waiter | None = None
        self._probe: PortProbe | None = None
        self._recording = False

    # -- signals from the threads -------------------------------------------------------------------------------
    def _mark_ready(self) -> None:
        with self._lock:
            if self._ready_at is None:
                self._ready_at = time.monotonic()
        self._ready.set()

    def _mark_failed(self, why: str) -> None:
        with self._lock:
            self._failure = self._failure or why
        self._ready.set()

    def _line(self, _stream: str, text: str) -> None:
        pattern = self.readiness.pattern
        if pattern is not None and pattern.search(text):
            self._mark_ready()

    def _watch_exit(self, waiter: Waiter) -> None:
        try:
            result = waiter.result()
        except WrapperError as exc:
            self._mark_failed(f"waiting for the container failed: {exc.message}")
            return
        with self._lock:
            self._exit, self._exit_at = result, time.monotonic()
        if result is not None and result.status == 0 and self.readiness.mode == "exit":
            self._mark_ready()
        elif result is not None:
            how = _describe_status(result.status)
            self._mark_failed(f"the container {how} before it was ready ({self.readiness.describe()})")

    # -- the run ----------------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Create, start and wait until ready (StartupError otherwise); the times of each step."""
        started = time.monotonic()
        self.output.open()
        self.client.containers.create(
            Container(
                id=self.id,
                spec=self.spec,
                image=self.image,
                snapshotter=self.snapshotter,
                snapshot_key=self.snapshot_key,
                labels={"soci-wrapper/startup": "1"},
            )
        )
        self._container = True
        pid = self.client.tasks.create(self.id, self.rootfs, self.output.task_io, timeout=120.0)
        self._task = True
        created = time.monotonic()
        if self.recorder is not None:
            self.recorder.start(self.sandbox.path(self.bundle_rootfs))
            self._recording = True
        self._waiter = self.client.tasks.wait(self.id)
        threading.Thread(
            target=self._watch_exit, args=(self._waiter,), name="startup-wait", daemon=True
        ).start()
        if self.readiness.mode == "port":
            assert self.readiness.port is not None
            netns = self.sandbox.proc(pid) / "ns" / "net"
            self._probe = PortProbe(netns, self.readiness.port, self._mark_ready, self._mark_failed)
        self.client.tasks.start(self.id)
        began = time.monotonic()
        if self._probe is not None:
            self._probe.start()
        if not self._ready.wait(self.readiness.timeout):
            raise StartupError(
                f"the container was not ready within {self.readiness.timeout:g} s ({self.readiness.describe()})",
                hint="raise --timeout, or check the readiness condition",
                detail=self.output.tail() or None,
            )
        recorded = self._stop_recording()
        with self._lock:
            failure, ready_at, exit_ = self._failure, self._ready_at, self._exit
        if ready_at is None:
            raise StartupError(
                failure or "the container stopped before it was ready", detail=self.output.tail() or None
            )
        return Outcome(
            created=created - started,
            started=began - started,
            ready=ready_at - started,
            exit_status=exit_.status if exit_ is not None else None,
            recorded=recorded,
        )

    def _stop_recording(self) -> list[str] | None:
        if self.recorder is None or not self._recording:
            return None
        self._recording = False
        return self.recorder.stop()

    # -- the end ------------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and remove the task and the container (each step tried even if one before failed)."""
        if self._probe is not None:
            self._probe.halt()
        with contextlib.suppress(Exception):
            self._stop_recording()
        if self._task:
            self._end_task()
        if self._container:
            _quietly(f"delete container {self.id}", self.client.containers.delete, self.id)
            self._container = False
        self.output.close(timeout=1.0)
        if self._waiter is not None:
            self._waiter.cancel()

    def _end_task(self) -> None:
        with self._lock:
            exited = self._exit is not None
        if not exited:
            _quietly(f"kill task {self.id}", self.client.tasks.kill, self.id, signal.SIGKILL)
            if self._waiter is not None:
                with contextlib.suppress(WrapperError):
                    self._waiter.result(_KILL_WAIT)
        _quietly(f"delete task {self.id}", self.client.tasks.delete, self.id)
        self._task = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _describe_status(status: int) -> str:
    if status > 128:
        try:
            return f"was killed by {signal.Signals(status - 128).name}"
        except ValueError:
            pass
    return f"exited with status {status}"


def _quietly(what: str, func: Any, *args: Any) -> None:
    """A clean-up step: failures are logged, not raised (the next steps still run)."""
    try:
        func(*args)
    except NotFoundError:
        pass
    except WrapperError as exc:
        log.warning("could not %s: %s", what, exc.message)

"""containerd's Tasks service: a container's process, run by its runtime shim (containerd-shim-runc-v2).

    pid = tasks.create(container_id, rootfs, TaskIO(stdout=..., stderr=...))   # runc create: set up, not run
    tasks.start(container_id)                                                 # the program runs
    exit = tasks.wait(container_id).result()                                  # once it has exited
    tasks.kill(container_id, signal.SIGKILL); tasks.delete(container_id)      # the shim unmounts and exits

``stdin``/``stdout``/``stderr`` are paths of named pipes (FIFOs) that the shim opens; the caller makes them
and reads them (empty: no such stream). pids are as containerd sees them (its own PID namespace).
"""

from __future__ import annotations

import signal as signals
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from wrapper.containerd._proto import process_pb2, tasks_pb2, tasks_pb2_grpc
from wrapper.containerd.channel import Connection
from wrapper.containerd.mounts import MountLike, to_proto


@dataclass(frozen=True)
class TaskIO:
    """The task's standard streams: FIFO paths (empty: none)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Exit:
    """How a process ended: its exit status (128 + N when killed by signal N, as the shim reports it)."""

    status: int
    exited_at: datetime | None = None


@dataclass(frozen=True)
class Task:
    """A task as Tasks.Get describes it: ``status`` is ``created``, ``running``, ``stopped``, ..."""

    container_id: str
    pid: int
    status: str
    exit_status: int


def _exit(status: int, exited_at: Any) -> Exit:
    when = exited_at.ToDatetime() if exited_at.seconds or exited_at.nanos else None
    return Exit(int(status), when)


def _task(process: Any) -> Task:
    status = process_pb2.Status.Name(process.status).lower()
    return Task(str(process.container_id), int(process.pid), status, int(process.exit_status))


class Waiter:
    """A pending Tasks.Wait: ``result(timeout)`` gives the Exit once the process has ended (None while it
    has not, after ``timeout`` seconds); ``cancel()`` gives up the call."""

    def __init__(self, conn: Connection, future: Any) -> None:
        self._conn = conn
        self._future = future

    def done(self) -> bool:
        return bool(self._future.done())

    def result(self, timeout: float | None = None) -> Exit | None:
        try:
            response = self._future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return None
        except grpc.RpcError as exc:
            raise self._conn.error(exc, "tasks.Wait") from None
        return _exit(response.exit_status, response.exited_at)

    def cancel(self) -> None:
        self._future.cancel()


class TasksService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = tasks_pb2_grpc.TasksStub(conn.channel)

    def create(
        self, container_id: str, rootfs: Iterable[MountLike], io: TaskIO, *, timeout: float | None = None
    ) -> int:
        """Create the task of container ``container_id`` on root filesystem ``rootfs`` (the shim mounts it and
        runs ``runc create``); its pid. The program does not run until start()."""
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id,
            rootfs=to_proto(rootfs),
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
        )
        return int(self._conn.unary("tasks.Create", self._stub.Create, request, timeout=timeout).pid)

    def start(self, container_id: str) -> int:
        """Run the created task's program; its pid."""
        request = tasks_pb2.StartRequest(container_id=container_id)
        return int(self._conn.unary("tasks.Start", self._stub.Start, request).pid)

    def wait(self, container_id: str) -> Waiter:
        """Wait for the task's process to exit, without a deadline (see Waiter). Call it before start() to be
        sure not to miss a quick exit (a call made after the exit answers at once anyway)."""
        request = tasks_pb2.WaitRequest(container_id=container_id)
        return Waiter(self._conn, self._stub.Wait.future(request, metadata=self._conn.metadata()))

    def kill(self, container_id: str, signal: int = signals.SIGKILL, *, all_processes: bool = True) -> None:
        """Send ``signal`` to the task's process (``all_processes``: to every process of the container)."""
        request = tasks_pb2.KillRequest(container_id=container_id, signal=int(signal), all=all_processes)
        self._conn.unary("tasks.Kill", self._stub.Kill, request)

    def get(self, container_id: str) -> Task:
        """The task of ``container_id``; NotFoundError if it has none."""
        request = tasks_pb2.GetRequest(container_id=container_id)
        return _task(self._conn.unary("tasks.Get", self._stub.Get, request).process)

    def list(self) -> list[Task]:
        """The namespace's tasks."""
        response = self._conn.unary("tasks.List", self._stub.List, tasks_pb2.ListTasksRequest())
        return [_task(p) for p in response.tasks]

    def delete(self, container_id: str) -> Exit:
        """Delete a stopped (or never started) task: the shim unmounts the root filesystem and exits."""
        request = tasks_pb2.DeleteTaskRequest(container_id=container_id)
        response = self._conn.unary("tasks.Delete", self._stub.Delete, request)
        return _exit(response.exit_status, response.exited_at)

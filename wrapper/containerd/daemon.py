"""Run a private containerd for the duration of a command, or attach to one that is already running.

A managed daemon keeps everything (config, root, state, socket, log) in one work directory, so it never
touches the system's /var/lib/containerd or /run/containerd, and removing that directory leaves nothing
behind.

A managed daemon that dies while in use (killed, out of memory, crashed) is noticed at once: the programs this
process started against it (soci) are stopped, since they cannot finish without it, and every call that fails
because it is gone, and the ``with`` block it ends, report one error that says so, with the daemon's exit and
the end of its log.

The daemon is started, stopped and tied to this process's life by the process supervisor
(``wrapper.system.supervisor``): a soci-wrapper killed with SIGKILL leaves no
containerd behind. A caller adds what its daemon needs to the config: proxy plugins (a remote snapshotter
such as soci-snapshotter-grpc), and plugins that are disabled by default (the runtime, to run containers).

    with ManagedContainerd() as daemon:
        client = ContainerdClient(daemon.address)
    with ManagedContainerd(work, proxy_plugins=[ProxyPlugin("soci", "snapshot", socket)]) as daemon:
        ...
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from google.protobuf import empty_pb2

from wrapper.containerd._proto import version_pb2_grpc
from wrapper.containerd.channel import (
    Connection,
    DaemonExitedError,
    register_exit_check,
    socket_path,
    status_details,
    unregister_exit_check,
)
from wrapper.containerd.config import (
    DISABLED_PLUGINS_1,
    DISABLED_PLUGINS_2,
    ProxyPlugin,
    major_version,
    render_config,
)
from wrapper.core.errors import ContainerdError, MissingDependencyError
from wrapper.core.util import one_line
from wrapper.system.supervisor import Child, Supervisor, supervisor

log = logging.getLogger(__name__)

__all__ = [  # the config's names, for those who import them from here
    "DISABLED_PLUGINS_1",
    "DISABLED_PLUGINS_2",
    "ProxyPlugin",
    "major_version",
    "render_config",
]

ATTACH_HINT = "start containerd there, or leave out --containerd-address and soci-wrapper starts its own"
MISSING_MESSAGE = "containerd not found: install Debian's containerd package or run scripts/bootstrap.sh"

# Longest path a unix socket can have on Linux (sun_path is 108 bytes including the final NUL).
_MAX_SOCKET_PATH = 107
# containerd also opens "<grpc address>.ttrpc".
_TTRPC_SUFFIX = ".ttrpc"
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 20
_EXIT_LOG_TAIL_LINES = 10  # under the one line that says the daemon died
# How often the watchdog looks whether the daemon is still alive.
_WATCH_INTERVAL = 0.1


def find_containerd(binary: str = "containerd") -> str | None:
    """The full path of the containerd program (``binary`` may be a name or a path), or None."""
    return supervisor().find_program("containerd", explicit=binary)


@functools.cache  # asked by the preflight and again by the daemon start: run it once per program
def containerd_binary_version(path: str) -> str:
    """The version printed by ``containerd --version``, without a leading ``v`` (``1.6.20~ds1``, ``2.2.6``)."""
    try:
        proc = supervisor().run([path, "--version"], name="containerd --version", timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingDependencyError(f"cannot run {path} --version: {exc}") from None
    # "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
    # "containerd github.com/containerd/containerd/v2 v2.2.6 11ce9d5f3c68c941867e82890e93e815c1304f1b"
    match = re.match(r"containerd\s+\S+\s+v?(\S+)", proc.stdout.strip())
    if proc.returncode != 0 or not match:
        output = one_line(proc.stdout + proc.stderr)[:200]
        raise MissingDependencyError(
            f"{path} is not containerd: its --version says {output!r}",
            hint="install Debian's containerd package, or pass --containerd-bin the containerd program",
        )
    return match.group(1)


def _version_answers(address: str, timeout: float) -> grpc.RpcError | None:
    """Call Version once on a fresh channel; None if it answered, else the error."""
    conn = Connection(address, "default", timeout=timeout)
    try:
        version_pb2_grpc.VersionStub(conn.channel).Version(empty_pb2.Empty(), timeout=timeout)
        return None
    except grpc.RpcError as exc:
        return exc
    finally:
        conn.close()


class ManagedContainerd:
    """A containerd daemon we start, own and stop, living entirely in ``work_dir``.

    ``work_dir`` None means a new temporary directory. On stop, the work directory is removed (only the
    files we created, if the directory existed before) unless ``keep_work_dir``. ``proxy_plugins`` and
    ``enable_plugins`` go into its config (see ``render_config``). ``processes``: the supervisor that starts
    and stops it (default: the process-wide one).
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        binary: str = "containerd",
        keep_work_dir: bool = False,
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        proxy_plugins: Sequence[ProxyPlugin] = (),
        enable_plugins: Collection[str] = (),
        processes: Supervisor | None = None,
    ) -> None:
        self._requested_dir = Path(work_dir) if work_dir is not None else None
        self._binary = binary
        self.proxy_plugins = tuple(proxy_plugins)
        self.enable_plugins = frozenset(enable_plugins)
        self._processes = processes
        self.keep_work_dir = keep_work_dir
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._work_dir: Path | None = None
        self._created_work_dir = False
        self._socket_dir: Path | None = None  # a short extra directory when work_dir is too deep
        self._address: str | None = None
        self._proc: Child | None = None
        self._binary_version: str | None = None
        self._stopping = threading.Event()  # set by stop(): an exit from here on is expected
        self._watchdog: threading.Thread | None = None
        self._exit_error: DaemonExitedError | None = None
        self._exit_lock = threading.Lock()

    # -- properties -------------------------------------------------------------------------------------

    @property
    def processes(self) -> Supervisor:
        if self._processes is None:
            self._processes = supervisor()
        return self._processes

    @property
    def address(self) -> str:
        """The daemon's gRPC socket path."""
        if self._address is None:
            raise ContainerdError("the managed containerd has not been started")
        return self._address

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise ContainerdError("the managed containerd has not been started")
        return self._work_dir

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.work_dir / "containerd.log"

    @property
    def binary_version(self) -> str | None:
        """The version ``containerd --version`` printed (``1.6.20~ds1``, ``2.2.6``), once started."""
        return self._binary_version

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon and return once it answers Version; ContainerdError if it does not."""
        if self._proc is not None:
            raise ContainerdError("the managed containerd is already running")
        binary = find_containerd(self._binary)
        if binary is None:
            if self._binary == "containerd":
                raise MissingDependencyError(MISSING_MESSAGE)
            raise MissingDependencyError(f"{MISSING_MESSAGE} (looked for {self._binary})")
        # The config format depends on the release (1.x: version 2; 2.x: version 3 and renamed plugins).
        try:
            self._binary_version = containerd_binary_version(binary)
            major = major_version(self._binary_version)
        except (MissingDependencyError, ValueError) as exc:
            raise ContainerdError(f"cannot start {binary}: {exc}") from None
        try:
            self._prepare_dirs()
            self._spawn(binary, major)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        register_exit_check(self.address, self.exit_error)
        self._watchdog = threading.Thread(target=self._watch, name="containerd-watchdog", daemon=True)
        self._watchdog.start()

    # -- an unexpected exit -----------------------------------------------------------------------------

    def exit_error(self, grace: float = 0.0) -> DaemonExitedError | None:
        """The error to report if the daemon died while it should be running (waiting up to ``grace``
        seconds for a process that is dying); None while it runs, and after stop()."""
        proc = self._proc
        if proc is None or self._stopping.is_set():
            return None
        code = proc.poll()
        if code is None and grace > 0:
            try:
                code = proc.wait(grace)
            except subprocess.TimeoutExpired:
                return None
        if code is None or self._stopping.is_set():
            return None
        with self._exit_lock:
            if self._exit_error is None:
                self._exit_error = self._describe_exit(proc.pid, code)
            return self._exit_error

    def _describe_exit(self, pid: int, code: int) -> DaemonExitedError:
        tail = self.log_tail(_EXIT_LOG_TAIL_LINES)
        if code < 0:
            try:
                how = f"signal {-code}, {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
            message = f"containerd (pid {pid}) exited unexpectedly ({how})"
        else:
            reason = _last_error_line(tail)
            message = f"containerd (pid {pid}) exited unexpectedly (status {code})"
            message += f": {reason}" if reason else ""
        return DaemonExitedError(message, detail=tail or None)

    def _watch(self) -> None:
        """Watchdog: notice at once a daemon that dies while in use, and stop what cannot go on without it.
        (It polls: a thread blocked in wait() would keep every other poll() from seeing the exit.)"""
        proc = self._proc
        while proc is not None and not self._stopping.wait(_WATCH_INTERVAL):
            if proc.poll() is None:
                continue
            error = self.exit_error()
            if error is None:  # stopped meanwhile
                return
            log.debug("%s", error.message)
            stopped = self.processes.stop_users(self.address)
            if stopped:
                log.debug("stopped %s, which used the dead containerd", ", ".join(map(str, stopped)))
            return

    def _prepare_dirs(self) -> None:
        if self._requested_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="soci-wrapper-containerd-"))
            self._created_work_dir = True
            self.processes.own(self._work_dir, keep=self.keep_work_dir, run_dir=True)
        else:
            self._work_dir = self._requested_dir.absolute()
            self._created_work_dir = not self._work_dir.exists()
        work = self._work_dir
        if os.geteuid() != 0:
            raise ContainerdError(
                f"cannot run containerd with root {work / 'root'}: it needs root privileges "
                f"(running as uid {os.geteuid()})",
                hint="run as root, or attach to a running containerd",
            )
        for path in (work, work / "root", work / "state"):
            try:
                path.mkdir(mode=0o711, parents=True, exist_ok=True)
                probe = path / ".write-test"
                probe.touch()
                probe.unlink()
            except OSError as exc:
                raise ContainerdError(
                    f"cannot use {path} for containerd: {exc.strerror or exc}", detail=str(exc)
                ) from None

        address = work / "containerd.sock"
        if len(os.fsencode(address)) + len(_TTRPC_SUFFIX) > _MAX_SOCKET_PATH:
            # Sockets cannot live that deep: use a short directory of our own for them.
            base = "/tmp" if os.access("/tmp", os.W_OK) else None
            self._socket_dir = Path(tempfile.mkdtemp(prefix="swcd-", dir=base))
            self.processes.own(self._socket_dir)
            address = self._socket_dir / "containerd.sock"
        self._address = str(address)

    def _spawn(self, binary: str, major: int) -> None:
        config = self.work_dir / "config.toml"
        config.write_text(
            render_config(
                root=self.work_dir / "root",
                state=self.work_dir / "state",
                address=self.address,
                major=major,
                proxy_plugins=self.proxy_plugins,
                enable_plugins=self.enable_plugins,
            )
        )
        log.debug("starting %s --config %s", binary, config)
        try:
            # Its own process group: a Ctrl-C in the terminal reaches us, and we stop the daemon cleanly.
            self._proc = self.processes.start(
                [binary, "--config", str(config)],
                name="containerd",
                log_file=self.log_path,
            )
        except OSError as exc:
            raise ContainerdError(f"cannot start {binary}: {exc.strerror or exc}") from None

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "the socket did not appear"
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                reason = _last_error_line(tail)
                message = f"containerd exited during startup (status {code})"
                raise ContainerdError(f"{message}: {reason}" if reason else message, detail=tail)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ContainerdError(
                    f"containerd did not answer within {self.start_timeout:g}s ({last_error})",
                    detail=self.log_tail(),
                )
            if os.path.exists(self.address):
                error = _version_answers(self.address, min(1.0, remaining))
                if error is None:
                    log.debug("containerd ready at %s (pid %s)", self.address, self._proc.pid)
                    return
                last_error = status_details(error) or "no answer"
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after ``stop_timeout``) and remove the work directory."""
        self._stopping.set()
        if self._watchdog is not None:
            if self._watchdog is not threading.current_thread():
                self._watchdog.join(5.0)
            self._watchdog = None
        if self._address is not None:
            unregister_exit_check(self._address)
        proc, self._proc = self._proc, None
        if proc is not None and proc.stop(self.stop_timeout):
            log.warning("containerd (pid %s) ignored SIGTERM for %ss; killed it", proc.pid, self.stop_timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket_dir is not None:
            self.processes.release(self._socket_dir, remove=True)
            self._socket_dir = None
        work = self._work_dir
        if work is None:
            return
        if self._created_work_dir:
            self.processes.release(work, remove=not self.keep_work_dir)
        elif not self.keep_work_dir:
            # A directory the caller gave us: remove only what we put there.
            for name in ("root", "state", "config.toml", "containerd.log", "containerd.sock"):
                self.processes.release(work / name, remove=True)
            (work / ("containerd.sock" + _TTRPC_SUFFIX)).unlink(missing_ok=True)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the daemon's log (empty if there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, ContainerdError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the daemon. A block that failed because the daemon died (soci stopped, a call refused, ...)
        fails with the error that says so instead; an interrupt stays an interrupt."""
        died = None
        if isinstance(exc, Exception):
            died = self.exit_error()
        self.stop()
        if died is not None and exc is not died:
            log.debug("failed after containerd died: %s", exc)
            raise died from exc


class AttachedContainerd:
    """A containerd someone else runs, with the same interface as ManagedContainerd.

    start() checks that the socket exists and the daemon answers; stop() leaves the daemon alone.
    """

    def __init__(self, address: str, *, start_timeout: float = 5.0) -> None:
        self._address = socket_path(address)
        self.start_timeout = start_timeout

    @property
    def address(self) -> str:
        return self._address

    @property
    def work_dir(self) -> Path | None:
        return None

    @property
    def pid(self) -> int | None:
        return None

    def start(self) -> None:
        path = self._address
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ContainerdError(
                f"cannot reach containerd at {path}: the socket does not exist", hint=ATTACH_HINT
            ) from None
        except OSError as exc:
            raise ContainerdError(f"cannot reach containerd at {path}: {exc.strerror or exc}") from None
        if not stat.S_ISSOCK(mode):
            raise ContainerdError(f"cannot reach containerd at {path}: not a unix socket", hint=ATTACH_HINT)
        conn = Connection(path, "default", timeout=self.start_timeout)
        try:
            # Through the client's error mapping, so refused/permission errors read the same everywhere.
            conn.unary(
                "version.Version",
                version_pb2_grpc.VersionStub(conn.channel).Version,
                empty_pb2.Empty(),
                timeout=self.start_timeout,
            )
        except ContainerdError as exc:
            if path not in exc.message:  # say which socket did not answer like containerd
                exc.message = f"cannot reach containerd at {path}: {exc.message} (is it containerd's socket?)"
            raise
        finally:
            conn.close()

    def stop(self) -> None:
        """Nothing to do: the daemon is not ours."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def attach(address: str) -> AttachedContainerd:
    """An AttachedContainerd for ``address`` (call start(), or use it as a context manager)."""
    return AttachedContainerd(address)


def _last_error_line(log_text: str) -> str:
    """Why containerd stopped, from its log: a plain last line (its exit message) or the last
    fatal/error entry, shortened to one line."""
    lines = [line for line in log_text.splitlines() if line.strip()]
    if lines and "level=" not in lines[-1]:
        return one_line(lines[-1].removeprefix("containerd: "))[:300]
    for level in ("level=fatal", "level=error"):
        for line in reversed(lines):
            if level not in line:
                continue
            match = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
            text = match.group(1).replace('\\"', '"') if match else line
            error = re.search(r'error="((?:[^"\\]|\\.)*)"', line)
            if error:
                text = f"{text}: {error.group(1)}"
            return one_line(text)[:300]
    return ""

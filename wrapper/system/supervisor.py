"""The one owner of every process soci-wrapper starts (containerd, soci, soci-snapshotter-grpc, and what comes).

Each child:

* runs in a process group of its own (so a Ctrl-C in the terminal reaches the tool, which stops it cleanly,
  and stopping it stops what it started);
* is stopped one way: SIGTERM to its group, a bounded wait, SIGKILL to the group, reaped (``Child.stop``);
* is in a registry of live children, so that what must stop together can (``stop_users``, ``kill_tagged``);
* dies with the tool, however the tool dies. Three layers:

  1. ``PR_SET_PDEATHSIG`` (SIGKILL), set between fork and exec by ``setpriv --pdeathsig`` (util-linux) or, where
     that is missing, a small Python launcher. Linux sends it when the *thread* that forked the child exits,
     so every child is forked by one long-lived thread (``_Spawner``), never by a pool's worker thread.
  2. A watchdog process (``wrapper/system/cleanup.py watch``, in a session of its own) holds a pipe from the
     tool, which tells it the process groups and directories it owns. When the pipe ends without "done"
     (SIGKILL, the OOM killer), it kills those groups (also the grandchildren that PDEATHSIG does not reach),
     undoes the mounts below those directories and removes them.
  3. Each run directory holds an owner record (pid and start time of the tool, its process groups): the next
     run sweeps the run directories whose owner is gone (``wrapper.system.rundirs``), should the watchdog
     have been killed too.

Signals: the CLI's SIGINT/SIGTERM handlers call ``deliver_signal``; while a child is being started the
exception is held back and raised once it has started (and it is then stopped), so no child is left that
nobody stops.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from wrapper.system import binaries, cleanup

log = logging.getLogger("wrapper.system.supervisor")

T = TypeVar("T")
Stream = int | IO[Any] | None  # what a child's stdout or stderr may be, as for subprocess.Popen
_REAP_TIMEOUT = 10.0  # after SIGKILL (a process in uninterruptible sleep may take a moment)

# Run with ``python -I -S -c`` where setpriv cannot set the parent-death signal: argv[1] is the tool's pid.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"  # PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"  # the tool died before that: do not run
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class SignalGate:
    """Holds back the CLI's signal exceptions (Ctrl-C, SIGTERM) in the main thread while a child starts:
    raised there, the exception would leave a child nobody stops. The CLI's handlers call ``deliver``;
    ``release`` raises what came in between."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending: BaseException | None = None

    def deliver(self, exc: BaseException) -> None:
        if self._depth:
            self._pending = self._pending or exc
            return
        raise exc

    def hold(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # signals reach the main thread only
        self._depth += 1
        return True

    def release(self, held: bool) -> None:
        if not held:
            return
        self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            exc, self._pending = self._pending, None
            raise exc


_Job = tuple[Callable[[], Any], list[Any], threading.Event]


class _Spawner:
    """One long-lived thread that forks every child: the parent-death signal is tied to the forking thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="soci-wrapper-spawner", daemon=True)
                self._thread.start()
        box: list[Any] = []
        done = threading.Event()
        self._queue.put((fn, box, done))
        done.wait()
        ok, value = box[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _serve(self) -> None:
        while True:
            fn, box, done = self._queue.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller
                box.append((False, exc))
            done.set()


class _Watchdog:
    """The pipe to the watchdog process, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed = False

    def send(self, message: Mapping[str, Any]) -> None:
        with self._lock:
            if self._proc is None and not self._failed:
                self._start()
            if self._proc is None or self._proc.stdin is None:
                return
            try:
                self._proc.stdin.write((json.dumps(message) + "\n").encode())
                self._proc.stdin.flush()
            except OSError as exc:  # it was killed: the owner records still let the next run clean up
                log.debug("the watchdog is gone (%s)", exc)
                self._proc, self._failed = None, True

    def _start(self) -> None:
        argv = [sys.executable, "-I", "-S", "-B", cleanup.__file__, "watch"]
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, cwd="/",
            )  # fmt: skip
        except OSError as exc:
            log.debug("cannot start the watchdog: %s", exc)
            self._failed = True

    def close(self, done: bool) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.stdin is None:
                return
            with contextlib.suppress(OSError):
                if done:
                    proc.stdin.write(b'{"done": true}\n')
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5 if done else 0)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


class Child:
    """A child the supervisor started ."""

    def __init__(
        self,
        supervisor: Supervisor,
        proc: subprocess.Popen[Any],
        argv: Sequence[str],
        name: str,
        tags: Collection[str],
    ) -> None:
        self._supervisor = supervisor
        self.proc = proc
        self.name = name
        self.tags = frozenset(tags)
        self._argv = tuple(argv)
        self.start_time = cleanup.start_time(proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def argv(self) -> tuple[str, ...]:
        return self._argv

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def stdout(self) -> IO[Any] | None:
        return self.proc.stdout

    @property
    def stderr(self) -> IO[Any] | None:
        return self.proc.stderr

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        return self.proc.communicate(timeout=timeout)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM to its group, up to ``timeout`` s, SIGKILL to the group (what it left in it too), reaped,
        and out of the registry. True if it had to be killed."""
        killed = False
        if self.proc.poll() is None:
            if timeout > 0:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    killed = True
            else:
                killed = True
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %s) did not exit after SIGKILL", self.name, self.proc.pid)
        self._supervisor._forget(self)
        return killed

    def kill(self) -> None:
        """SIGKILL its group now, and reap it."""
        self.stop(0)


class Supervisor:
    """Starts, tracks and stops every child of this process (one per process: ``supervisor()``)."""

    def __init__(self) -> None:
        self.signals = SignalGate()
        self._spawner = _Spawner()
        self._watchdog = _Watchdog()
        self._lock = threading.RLock()
        self._children: dict[int, Child] = {}
        self._paths: dict[Path, tuple[bool, bool]] = {}  # path -> (keep, is a run directory)
        self._identity: dict[str, Any] | None = None
        self._launcher: tuple[str, ...] | None = None

    # -- starting --------------------------------------------------------------------------------------------
    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        stdin: Stream = subprocess.DEVNULL,
        stdout: Stream = subprocess.DEVNULL,
        stderr: Stream = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
        text: bool = False,
        tags: Collection[str] = (),
        log_file: Path | None = None,
    ) -> Child:
        """Start ``argv`` as a child (its own process group, tied to this process's life). Raises what
        ``subprocess.Popen`` raises when the program is missing (FileNotFoundError, PermissionError).
        ``log_file``: its stdout and stderr are appended to that file (a daemon's log; this process keeps no
        handle on it)."""
        argv = [str(a) for a in argv]
        _check_program(argv[0], env)
        launch = [*self._pdeathsig(), *argv]

        def spawn() -> Child:
            with contextlib.ExitStack() as stack:
                out, err = stdout, stderr
                if log_file is not None:
                    out, err = stack.enter_context(open(log_file, "ab")), subprocess.STDOUT
                proc = subprocess.Popen(
                    launch, stdin=stdin, stdout=out, stderr=err, env=None if env is None else dict(env),
                    text=text, bufsize=1 if text else -1, start_new_session=True,
                )  # fmt: skip
            child = Child(self, proc, argv, name, tags)
            self._register(child)
            return child

        # A signal now would leave the child running: it is delivered once the child has started.
        held = self.signals.hold()
        try:
            child = self._spawner.call(spawn)
        except BaseException:
            self.signals.release(held)
            raise
        try:
            self.signals.release(held)
        except BaseException:
            child.kill()
            raise
        log.debug("started %s (pid %s): %s", name, child.pid, " ".join(argv))
        return child

    def run(
        self, argv: Sequence[str], *, name: str, timeout: float, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command to its end (a ``--version``), as ``subprocess.run(capture_output, text)``."""
        child = self.start(argv, name=name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = child.communicate(timeout)
        finally:
            child.stop(0)
        result = subprocess.CompletedProcess(list(argv), child.returncode or 0, out, err)
        if check:
            result.check_returncode()
        return result

    def _pdeathsig(self) -> tuple[str, ...]:
        if self._launcher is None:
            setpriv = shutil.which("setpriv")
            usable = False
            if setpriv is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    probe = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=10)
                    usable = "--pdeathsig" in probe.stdout
            self._launcher = (setpriv, "--pdeathsig", "KILL", "--") if setpriv and usable else ()
        if self._launcher:
            return self._launcher
        return (sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()))

    # -- the registry ----------------------------------------------------------------------------------------
    def _register(self, child: Child) -> None:
        with self._lock:
            self._children[child.pid] = child
            self._write_owner_records()
        self._watchdog.send({"group": child.pid, "start": child.start_time})

    def _forget(self, child: Child) -> None:
        with self._lock:
            if self._children.get(child.pid) is not child:
                return
            del self._children[child.pid]
            self._write_owner_records()
        self._watchdog.send({"forget": child.pid})

    def children(self, tag: str | None = None) -> list[Child]:
        with self._lock:
            return [c for c in self._children.values() if tag is None or tag in c.tags]

    def kill_tagged(self, tag: str) -> list[int]:
        """SIGKILL every child tagged ``tag`` (and what each started); their pids."""
        found = self.children(tag)
        for child in found:
            child.kill()
        return [c.pid for c in found]

    def stop_users(self, needle: str) -> list[int]:
        """SIGKILL the children whose command line has the argument ``needle`` (a daemon's socket: the
        programs that cannot go on without it), with their groups; their pids."""
        found = [c for c in self.children() if needle in c.argv]
        for child in found:
            child.kill()
        return [c.pid for c in found]

    # -- paths -----------------------------------------------------------------------------------------------
    def own(self, path: Path, *, keep: bool = False, run_dir: bool = False) -> None:
        """Should this process die before ``release``, undo the mounts below ``path`` and remove it (unless
        ``keep``). A run directory (``run_dir``) also gets the owner record the next run's sweep reads."""
        path = Path(os.path.abspath(path))
        with self._lock:
            self._paths[path] = (keep, run_dir)
            self._write_owner_records()
        self._watchdog.send({"path": str(path), "keep": keep})

    def release(self, path: Path, *, remove: bool = False) -> None:
        """``path`` is not ours to clean up after any more; ``remove``: remove it now (a warning if that fails)."""
        path = Path(os.path.abspath(path))
        with self._lock:
            _, run_dir = self._paths.pop(path, (False, False))
            self._write_owner_records()
        if remove:
            self.remove(path)
        elif run_dir:
            (path / cleanup.OWNER_FILE).unlink(missing_ok=True)
        self._watchdog.send({"release": str(path)})

    @staticmethod
    def remove(path: Path) -> None:
        problem = cleanup.remove_tree(path)
        if problem is not None:
            log.warning("could not remove %s: %s", path, problem)

    def _write_owner_records(self) -> None:
        """The owner record of each run directory: who we are, our process groups, our other paths."""
        if self._identity is None:
            self._identity = cleanup.identity(os.getpid())
        groups = [[c.pid, c.start_time] for c in self._children.values()]
        extra = [str(p) for p, (_, run_dir) in self._paths.items() if not run_dir]
        for path, (keep, run_dir) in self._paths.items():
            if run_dir and path.is_dir():
                record = {"owner": self._identity, "keep": keep, "groups": groups, "paths": extra}
                cleanup.write_owner(path, record)

    # -- programs --------------------------------------------------------------------------------------------
    @staticmethod
    def find_program(name: str, *, explicit: str | None = None, env_var: str | None = None) -> str | None:
        return binaries.find_program(name, explicit=explicit, env_var=env_var, resolve=False)

    # -- the end ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """At exit: tell the watchdog we are done, unless something is still ours to clean up after."""
        with self._lock:
            idle = not self._children and not self._paths
        self._watchdog.close(done=idle)

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid


def _check_program(program: str, env: Mapping[str, str] | None) -> None:
    """Fail as ``subprocess.Popen`` would for a program that cannot be run (the launcher would only exit)."""
    if os.sep in program:
        path: str | None = program
    else:
        search = (env or os.environ).get("PATH", os.defpath)
        path = shutil.which(program, path=search)
        if path is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    assert path is not None
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


_SUPERVISOR = Supervisor()
atexit.register(_SUPERVISOR.close)


def supervisor() -> Supervisor:
    """The process-wide supervisor."""
    return _SUPERVISOR


def deliver_signal(exc: BaseException) -> None:
    """For the CLI's signal handlers: raise ``exc`` now, or as soon as the child being started has started."""
    _SUPERVISOR.signals.deliver(exc)

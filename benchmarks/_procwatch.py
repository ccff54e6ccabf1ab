"""Running a command and watching it: wall time, output lines as they arrive, the process tree it starts
(memory, when each process started), and soci's temporary layer copies.

``run_watched`` starts the command in its own session (so a Ctrl-C in the terminal reaches only the
benchmark, which then stops the command and everything it started), reaps it with ``wait4`` (its
``ru_maxrss`` covers the command *and* the descendants it reaped), and meanwhile samples ``/proc`` every
``interval`` seconds:

* the process tree under the command (through ``/proc/PID/task/TID/children``): each process's command
  line, start time (``/proc/PID/stat``, 10 ms resolution) and peak resident set (``VmHWM``), and the
  largest sum of ``VmRSS`` over the tree at one moment;
* directories where soci copies layers before building their zTOCs (``tmp.*`` files in its ``TMPDIR``):
  when each copy appeared, when it stopped growing, when it was removed (soci removes it once the zTOC is
  built and stored).

Every process the command started and left running (a daemon in a session of its own, say) is killed when
the command is gone, by pid, after checking that the pid still belongs to the same process (start time).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


class CommandTimeout(Exception):
    """The command did not finish in time (it was killed)."""


@dataclass
class ProcInfo:
    pid: int
    cmdline: str
    start: float  # seconds after the command was spawned
    first_seen: float
    last_seen: float
    hwm_kib: int = 0  # VmHWM: the process's own peak resident set
    start_ticks: int = 0


@dataclass
class TmpCopy:
    """A ``tmp.*`` file soci wrote: a layer copied out of containerd before its zTOC is built."""

    name: str
    appeared: float
    size: int = 0
    grown: float = 0.0  # when it was last seen growing (the copy ends between this and the next sample)
    gone: float | None = None  # when it was first seen missing (zTOC built and stored)


@dataclass
class Watched:
    """What ``run_watched`` saw."""

    argv: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr_lines: list[tuple[float, str]]  # (seconds after spawn, line)
    maxrss_kib: int  # wait4: the command and its reaped descendants (the largest of them)
    self_hwm_kib: int  # the command's own VmHWM, last sampled
    tree_rss_peak_kib: int  # the largest sum of VmRSS over the tree at one sample
    procs: list[ProcInfo] = field(default_factory=list)
    copies: list[TmpCopy] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.stderr_lines)

    def tail(self, lines: int = 8) -> str:
        text = self.stderr.strip() or self.stdout.strip()
        return "\n".join(text.splitlines()[-lines:])

    def procs_matching(self, *words: str) -> list[ProcInfo]:
        return [p for p in self.procs if all(w in p.cmdline for w in words)]

    def line_time(self, needle: str, *, last: bool = False) -> float | None:
        """When the first (or last) stderr line containing ``needle`` arrived."""
        hits = [t for t, line in self.stderr_lines if needle in line]
        if not hits:
            return None
        return hits[-1] if last else hits[0]


def _read_status(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in KiB, or None if the process is gone (or a zombie: no Vm lines)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    hwm = rss = -1
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    if hwm < 0 or rss < 0:
        return None
    return hwm, rss


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[19])  # fields[0] is field 3 (state)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError):
            out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class _Sampler(threading.Thread):
    def __init__(self, root: int, t0: float, boot0: float, interval: float, tmp_globs: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.t0 = t0
        self.boot0 = boot0  # CLOCK_BOOTTIME at t0: converts /proc start times to our timeline
        self.interval = interval
        self.tmp_globs = list(tmp_globs)
        self.procs: dict[tuple[int, int], ProcInfo] = {}
        self.root_hwm = 0
        self.tree_peak = 0
        self.copies: dict[str, TmpCopy] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        now = time.perf_counter() - self.t0
        total = 0
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            stack += _children(pid)
            status = _read_status(pid)
            if status is None:
                continue
            hwm, rss = status
            total += rss
            if pid == self.root:
                self.root_hwm = max(self.root_hwm, hwm)
                continue
            ticks = start_ticks(pid)
            if ticks is None:
                continue
            info = self.procs.get((pid, ticks))
            if info is None:
                info = ProcInfo(
                    pid=pid,
                    cmdline=_cmdline(pid),
                    start=ticks / CLK_TCK - self.boot0,
                    first_seen=now,
                    last_seen=now,
                    start_ticks=ticks,
                )
                self.procs[(pid, ticks)] = info
            info.last_seen = now
            info.hwm_kib = max(info.hwm_kib, hwm)
            # Read again each time: a process first seen between fork and exec has its parent's.
            info.cmdline = _cmdline(pid) or info.cmdline
        self.tree_peak = max(self.tree_peak, total)
        if self.tmp_globs:
            self._sample_copies(now)

    def _sample_copies(self, now: float) -> None:
        present: set[str] = set()
        for pattern in self.tmp_globs:
            for path in glob.glob(pattern):
                try:
                    size = os.stat(path).st_size
                except OSError:
                    continue
                present.add(path)
                copy = self.copies.get(path)
                if copy is None or copy.gone is not None:
                    copy = TmpCopy(name=path, appeared=now, size=size, grown=now)
                    self.copies[path] = copy
                elif size != copy.size:
                    copy.size = size
                    copy.grown = now
        for path, copy in self.copies.items():
            if copy.gone is None and path not in present:
                copy.gone = now


def kill_leftovers(procs: Sequence[ProcInfo]) -> list[ProcInfo]:
    """SIGKILL the processes of ``procs`` that still run (same pid *and* start time); the ones killed."""
    killed: list[ProcInfo] = []
    for info in procs:
        if start_ticks(info.pid) != info.start_ticks or _read_status(info.pid) is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
            killed.append(info)
    return killed


def _pump_lines(stream: IO[str], into: list[tuple[float, str]], t0: float) -> None:
    for line in stream:
        into.append((time.perf_counter() - t0, line))


def _pump_all(stream: IO[str], into: list[str]) -> None:
    into.append(stream.read())


def run_watched(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    cwd: Path | None = None,
    interval: float = 0.025,
    tmp_globs: Sequence[str] = (),
    interrupt_grace: float = 15.0,
) -> Watched:
    """Run ``argv`` to completion, watching it (see the module docstring). On any exception while it runs
    (Ctrl-C, a timeout) it gets SIGINT, ``interrupt_grace`` seconds to clean up, then SIGKILL to its group,
    and its leftover descendants are killed."""
    t0 = time.perf_counter()
    boot0 = time.clock_gettime(time.CLOCK_BOOTTIME)
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[tuple[float, str]] = []
    out: list[str] = []
    readers = [
        threading.Thread(target=_pump_lines, args=(proc.stderr, lines, t0), daemon=True),
        threading.Thread(target=_pump_all, args=(proc.stdout, out), daemon=True),
    ]
    for reader in readers:
        reader.start()
    sampler = _Sampler(proc.pid, t0, boot0, interval, tmp_globs)
    sampler.start()
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, on_timeout)
    timer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        timer.cancel()
        _stop(proc, interrupt_grace)
        sampler.done.set()
        sampler.join()
        kill_leftovers(list(sampler.procs.values()))
        raise
    seconds = time.perf_counter() - t0
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    sampler.done.set()
    sampler.join()
    kill_leftovers(list(sampler.procs.values()))
    for reader in readers:
        reader.join(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    if timed_out.is_set():
        raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g} s")
    return Watched(
        argv=list(argv),
        seconds=seconds,
        returncode=proc.returncode,
        stdout="".join(out),
        stderr_lines=lines,
        maxrss_kib=int(usage.ru_maxrss),
        self_hwm_kib=sampler.root_hwm,
        tree_rss_peak_kib=sampler.tree_peak,
        procs=sorted(sampler.procs.values(), key=lambda p: p.start),
        copies=sorted(sampler.copies.values(), key=lambda c: c.appeared),
    )


def _stop(proc: subprocess.Popen[str], grace: float) -> None:
    """SIGINT (soci-wrapper cleans up on it), then SIGKILL to the whole group after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(5)


def unmount_under(path: Path) -> list[str]:
    """Lazily unmount every mount point at or below ``path`` (deepest first); the ones unmounted."""
    root = str(path.resolve())
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1:
                point = parts[1].replace("\\040", " ")
                if point == root or point.startswith(root + "/"):
                    points.append(point)
    done: list[str] = []
    for point in sorted(points, key=len, reverse=True):
        if subprocess.run(["umount", "-l", point], capture_output=True, check=False).returncode == 0:
            done.append(point)
    return done


__all__ = [
    "CommandTimeout",
    "ProcInfo",
    "TmpCopy",
    "Watched",
    "kill_leftovers",
    "run_watched",
    "start_ticks",
    "unmount_under",
]

"""A private house for containers: a PID and mount namespace whose processes all die together.

Run as a script (``python -I -S nsinit.py ...``, never imported by the package at run time):

    nsinit.py hold PID_FILE [--tmpfs DIR]...   # make the namespaces; their init's pid (host view) -> PID_FILE
    nsinit.py join PID -- PROGRAM ARGS...       # run PROGRAM inside the namespaces of process PID

``hold`` unshares a mount and a PID namespace; its child is the namespace's init (pid 1): it makes every mount
private (nothing mounted inside is seen outside), mounts a fresh /proc (pids inside are the namespace's) and a
tmpfs on each ``--tmpfs`` directory (containerd's fixed /run/containerd: shim sockets, runc's state), then only
reaps orphans until told to stop. When it ends, the kernel kills every process left in the namespace (shims,
containers, daemons), and with the last of them the mounts go: nothing started inside outlives it, even when
whoever started it is killed with SIGKILL (each child here gets SIGKILL when its parent dies).

``join`` enters the mount and PID namespaces of PID (containerd and soci-snapshotter-grpc are started this
way, so that they see each other's mounts: the snapshotter's FUSE mounts under containerd's overlays), keeps
the working directory, and runs PROGRAM as its child. Both modes forward SIGTERM, SIGINT, SIGHUP and SIGQUIT
to their child and end as it ends (same status, same signal), so the caller can treat them as the program.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(result, f"mount {fstype or ''} {target}")


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _end_like(status: int) -> int:
    """End this process as a child that ended with wait status ``status`` did."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught: no handler to reset
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        return 128 + number
    return os.waitstatus_to_exitcode(status)


def _supervise(child: int) -> int:
    """Forward our signals to ``child``; its wait status once it ends."""
    for number in FORWARDED:
        signal.signal(number, lambda n, _frame: os.kill(child, n))
    while True:
        try:
            pid, status = os.waitpid(child, 0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if pid == child:
            return status


def _init(tmpfs: Sequence[str]) -> None:
    """Pid 1 of the new namespace: private mounts, a fresh /proc, the tmpfs, then reap until a signal."""

    def on_signal(_n: int, _frame: object) -> None:
        # Ending here ends the namespace: the kernel kills every process left in it. (A flag would not do:
        # a wait for children is retried after the handler, and would go on waiting.)
        os._exit(0)

    for number in FORWARDED:
        signal.signal(number, on_signal)
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for directory in tmpfs:
        os.makedirs(directory, mode=0o711, exist_ok=True)
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711")
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.2)


def hold(pid_file: str, tmpfs: Sequence[str]) -> int:
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            _die_with_parent()
            _init_ready = True
            os.write(write_end, b"ok")
        except OSError:
            _init_ready = False
        os.close(write_end)
        if not _init_ready:
            os._exit(1)
        try:
            _init(tmpfs)
        except OSError as exc:
            print(f"nsinit: {exc}", file=sys.stderr)
            os._exit(1)
    os.close(write_end)
    os.read(read_end, 2)
    os.close(read_end)
    # Written only now: a reader of the file finds the pid of a process that will not outlive us.
    partial = f"{pid_file}.partial"
    with open(partial, "w") as fh:
        fh.write(f"{child}\n")
    os.rename(partial, pid_file)
    return _end_like(_supervise(child))


def join(target: int, argv: Sequence[str]) -> int:
    cwd = os.getcwd()
    # Both opened first: once in the mount namespace, /proc is the namespace's, where PID is not.
    fds = [
        (os.open(f"/proc/{target}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC), kind, flag)
        for kind, flag in (("mnt", CLONE_NEWNS), ("pid", CLONE_NEWPID))
    ]
    for fd, kind, flag in fds:
        _check(_libc.setns(fd, flag), f"setns {kind} of {target}")
        os.close(fd)
    child = os.fork()
    if child == 0:
        try:
            _die_with_parent()
            os.chdir(cwd)
            os.execvp(argv[0], list(argv))
        except OSError as exc:
            print(f"nsinit: cannot run {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
            os._exit(127)
    return _end_like(_supervise(child))


def main(args: Sequence[str]) -> int:
    if len(args) >= 2 and args[0] == "hold":
        tmpfs = [args[i + 1] for i in range(2, len(args) - 1) if args[i] == "--tmpfs"]
        return hold(args[1], tmpfs)
    if len(args) >= 4 and args[0] == "join" and args[2] == "--":
        return join(int(args[1]), args[3:])
    print("usage: nsinit.py hold PID_FILE [--tmpfs DIR]... | join PID -- PROGRAM ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Undoing what a run left: its process groups, its mounts, its directories. Standard library only.

Two callers, and so two ways of running:

* the supervisor (``wrapper.system.supervisor``) and the next run's sweep import it;
* the watchdog runs this file as a script (``python -I -S cleanup.py watch``), away from the package, so it
  imports nothing of soci-wrapper: it reads, on its standard input, what the tool owns right now (process
  groups, directories) as JSON lines, and when that pipe ends without ``{"done": true}`` (the tool was killed:
  SIGKILL, the OOM killer, a CI timeout), it kills those groups, undoes the mounts below those directories and
  removes them.

A process is named by (pid, start time) from ``/proc/PID/stat``, so a pid the kernel handed to another
process since is never taken for ours. A run directory holds an owner record (``OWNER_FILE``): who made it
(pid, start time, boot id, pid namespace), whether the user asked to keep it, and the process groups the
owner had running. The next run removes the run directories whose owner is gone (``sweep``), and never one
whose owner is alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

OWNER_FILE = ".soci-wrapper-owner.json"
RUN_DIR_PREFIX = "soci-wrapper-"
_GONE_WITHIN = 5.0  # how long killed groups get to disappear before their mounts and files are undone
_MNT_DETACH = 2


# -- processes -------------------------------------------------------------------------------------------------
def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot, field 22 of /proc/PID/stat); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after ``pid (comm)``: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def identity(pid: int) -> dict[str, Any]:
    """What names process ``pid`` for good: pid, start time, boot id and pid namespace."""
    return {"pid": pid, "start": start_time(pid), "boot": boot_id(), "pidns": pid_namespace()}


def alive(owner: dict[str, Any]) -> bool:
    """Whether the process ``owner`` (an ``identity``) still runs. A record made in another pid namespace
    cannot be checked from here: it counts as alive (never touch what might be a live run's)."""
    if owner.get("pidns") and owner.get("pidns") != pid_namespace():
        return True
    if owner.get("boot") and owner.get("boot") != boot_id():
        return False
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    current = start_time(pid)
    return current is not None and (owner.get("start") is None or current == owner.get("start"))


def group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, leader_start: int | None) -> bool:
    """SIGKILL process group ``pgid`` if it is still the one that was recorded: its leader runs with the
    recorded start time, or the leader is gone and members are left (the kernel hands out no pid that is
    still a process group's id, so they are ours). True if a signal was sent."""
    current = start_time(pgid)
    if current is not None and leader_start is not None and current != leader_start:
        return False  # the pid is another process's now
    if current is None and not group_members(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_groups(groups: Iterable[tuple[int, int | None]], *, wait: float = _GONE_WITHIN) -> list[int]:
    """Kill the recorded groups (pgid, leader's start time) and wait (bounded) until they are gone."""
    killed = [pgid for pgid, start in groups if kill_group(pgid, start)]
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline and any(group_members(g) for g in killed):
        time.sleep(0.02)
    return killed


def kill_users(paths: Iterable[Path]) -> list[int]:
    """SIGKILL the processes (but this one) with an argument at or below one of ``paths``: what a child started
    outside its process group and that still points into the run (containerd's shims get its socket's path)."""
    roots = [os.path.realpath(p) for p in paths]
    if not roots:
        return []
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(arg == root or arg.startswith(root.rstrip("/") + "/") for arg in argv for root in roots):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


# -- mounts and files ------------------------------------------------------------------------------------------
def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[tuple[str, str]]:
    """(mount point, file system type) of each mount of a mountinfo file."""
    out: list[tuple[str, str]] = []
    try:
        text = mountinfo.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mountpoint = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
        mountpoint = mountpoint.replace("\\134", "\\")
        out.append((mountpoint, right.split()[0] if right.split() else ""))
    return out


def is_under(path: str, root: Path) -> bool:
    root_text = os.path.realpath(root)
    return path == root_text or path.startswith(root_text.rstrip("/") + "/")


def unmount_under(root: Path) -> list[str]:
    """Detach whatever is mounted at or below ``root`` in this mount namespace, deepest first."""
    left = sorted((m for m, _ in mounts() if is_under(m, root)), key=len, reverse=True)
    for mountpoint in left:
        _detach(mountpoint)
    return left


def _detach(mountpoint: str) -> None:
    import ctypes  # only here: most runs never unmount anything
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.umount2(os.fsencode(mountpoint), _MNT_DETACH) == 0:
            return
    except (OSError, AttributeError):
        pass
    umount = shutil.which("umount")
    if umount is not None:
        import subprocess  # only here: a fallback where libc's umount2 could not be called

        subprocess.run([umount, "-l", mountpoint], capture_output=True, check=False)


def remove_tree(path: Path) -> str | None:
    """Remove ``path`` (a directory tree or a file); None, or why it could not be removed."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return str(exc)
    return None


def undo(groups: Iterable[tuple[int, int | None]], paths: Iterable[tuple[Path, bool]]) -> None:
    """Kill ``groups`` and what names one of ``paths`` on its command line, then undo the mounts below each of
    ``paths`` (path, keep) and remove those not kept."""
    paths = list(paths)
    kill_groups(groups)
    kill_users(path for path, _ in paths)
    for path, keep in paths:
        unmount_under(path)
        if not keep:
            remove_tree(path)
        elif path.is_dir():
            (path / OWNER_FILE).unlink(missing_ok=True)


# -- run directories -------------------------------------------------------------------------------------------
def write_owner(run_dir: Path, record: dict[str, Any]) -> None:
    """Write the owner record of ``run_dir`` (atomically: a sweep never reads half of one)."""
    tmp = run_dir / f".{OWNER_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, run_dir / OWNER_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_owner(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("owner"), dict) else None


def _groups_of(record: dict[str, Any]) -> list[tuple[int, int | None]]:
    out = []
    for item in record.get("groups") or []:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            out.append((int(item[0]), None if item[1] is None else int(item[1])))
    return out


def sweep(parent: Path, prefix: str = RUN_DIR_PREFIX) -> list[Path]:
    """Clean up after the runs under ``parent`` whose process is gone: kill the process groups they recorded,
    undo the mounts below their run directories and remove them (or, for a run asked to keep its directory,
    only its owner record), with the other paths they owned. Directories without an owner record, and those
    of a live process, are left alone. Returns the run directories cleaned up."""
    cleaned: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return cleaned
    for run_dir in candidates:
        record = read_owner(run_dir)
        if record is None or alive(record["owner"]):
            continue
        extra = [(Path(p), False) for p in record.get("paths") or [] if isinstance(p, str)]
        undo(_groups_of(record), [(run_dir, bool(record.get("keep"))), *extra])
        cleaned.append(run_dir)
    return cleaned


# -- the watchdog ----------------------------------------------------------------------------------------------
def watch(stream: Iterable[str]) -> int:
    """Follow the tool's messages until its pipe ends; clean up after it unless it said it is done.

    Messages (one JSON object a line): ``{"group": PGID, "start": T}`` / ``{"forget": PGID}``,
    ``{"path": P, "keep": BOOL}`` / ``{"release": P}``, ``{"done": true}``."""
    groups: dict[int, int | None] = {}
    paths: dict[str, bool] = {}
    done = False
    for line in stream:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if "group" in message:
            groups[int(message["group"])] = message.get("start")
        elif "forget" in message:
            groups.pop(int(message["forget"]), None)
        elif "path" in message:
            paths[str(message["path"])] = bool(message.get("keep"))
        elif "release" in message:
            paths.pop(str(message["release"]), None)
        elif message.get("done"):
            done = True
    if not done:
        undo(groups.items(), [(Path(p), keep) for p, keep in paths.items()])
    return 0


def _main(argv: list[str]) -> int:
    if argv[1:2] == ["watch"]:
        # Nothing may stop the watchdog before its tool ends: a Ctrl-C is the tool's to handle.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return watch(sys.stdin)
    print("usage: cleanup.py watch  (reads the tool's messages on standard input)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))

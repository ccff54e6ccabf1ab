"""Small helpers shared by the test modules: running the CLI, distinct content per test, pushing images, and
the processes running now (the one place tests read /proc for them)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.imagefactory import Image, ImageIndex, push_image
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``soci-wrapper ARGS`` in a child process, without the caller's SOCI_WRAPPER_* variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        cwd=ROOT,
        timeout=timeout,
    )


def seed_for(request: pytest.FixtureRequest) -> int:
    """Distinct image content per test: the session's containerd shares blobs across namespaces."""
    return int(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8], 16)


def push(registry: RegistryServer, client: RegistryClient, repo: str, image: Image | ImageIndex) -> Reference:
    """Push ``image`` as ``repo:v1``; returns its reference pinned by digest."""
    ref = Reference(registry.host, repo, tag="v1")
    return ref.with_digest(push_image(client, ref, image))


def faulty_soci(
    directory: Path, real_soci: str, *, create: str = "", push: str = "", convert: str = ""
) -> str:
    """A fault-injection shim around the real soci: it answers ``--version`` (and every command not named)
    by running the real binary, and for a named command ``fail``s (exit 1 with soci-like stderr), ``hang``s
    (sleeps, with a child process of its own) or is ``kill``ed by SIGKILL. Tests of soci-wrapper's handling
    of soci's failures use it; everything else runs the real soci."""
    behaviours = {"create": create, "push": push, "convert": convert}
    cases = []
    for command, behaviour in behaviours.items():
        action = {
            "fail": 'echo "soci: injected failure" >&2; exit 1',
            "hang": "sleep 300 & wait",
            "kill": "kill -KILL $$",
            "": "",
        }[behaviour]
        if action:
            cases.append(f"    {command}) {action} ;;")
    script = directory / f"faulty-soci-{create or '-'}-{push or '-'}-{convert or '-'}"
    lines = [
        "#!/usr/bin/env bash",
        "# find the command among soci's arguments (global flags come first)",
        'for arg in "$@"; do',
        '  case "$arg" in',
        *[c.replace("    ", "    ", 1) for c in cases],
        "  esac",
        "done",
        f'exec {real_soci} "$@"',
    ]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script)


# -- processes --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Process:
    """A live process, as /proc shows it."""

    pid: int
    state: str  # R running, S sleeping, D in the kernel, T stopped, ... (never Z: zombies are not listed)
    ppid: int
    pgid: int  # its process group
    started: int  # clock ticks after boot: tells a process from a later one that got the same pid
    argv: tuple[str, ...]

    @property
    def cmdline(self) -> str:
        return " ".join(self.argv)


def processes(containing: str | Path | None = None, *, group: int | None = None) -> list[Process]:
    """The processes running now, but this one: those whose command line contains ``containing`` (e.g. a work
    directory, which every process a run starts names in its arguments) and/or that are in process group
    ``group``. Zombies (exited, waiting for their parent to reap them) and kernel threads are not listed: they
    run nothing. A process that exits while it is read is not listed either."""
    needle = None if containing is None else str(containing)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
            if not raw or (needle is not None and needle.encode() not in raw.replace(b"\0", b" ")):
                continue
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ... (starttime: 19)
        if fields[0] in ("Z", "X") or (group is not None and int(fields[2]) != group):
            continue
        argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))
        found.append(
            Process(int(entry.name), fields[0], int(fields[1]), int(fields[2]), int(fields[19]), argv)
        )
    return found


def our_containerd_processes(work_dir: Path) -> list[int]:
    """PIDs of the processes of a run's containerd whose command line points into ``work_dir``: the daemon,
    and anything given its socket (soci)."""
    return [p.pid for p in processes(work_dir) if "containerd" in p.cmdline]


def process_tree(root: int) -> dict[int, int]:
    """The live processes below ``root`` (its children, theirs, ...): pid -> start time (/proc/PID/stat), which
    tells a process from a later one that got the same pid. Taken while ``root`` runs: once it is gone, its
    children belong to init and the tree is lost."""
    children: dict[int, list[Process]] = {}
    for process in processes():
        children.setdefault(process.ppid, []).append(process)
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            tree[child.pid] = child.started
            todo.append(child.pid)
    return tree


def still_running(tree: dict[int, int]) -> dict[int, str]:
    """Those processes of ``tree`` (pid -> start time) that still run (not zombies), with their command line."""
    return {p.pid: p.cmdline for p in processes() if tree.get(p.pid) == p.started}

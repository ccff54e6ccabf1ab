"""wrapper.system.cleanup: who owns a run directory, and the sweep after a killed run. Real processes (``sleep``)
stand for a run's children; no daemon is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import processes
from wrapper.system import cleanup
from wrapper.system.binaries import find


@pytest.fixture
def dead_owner() -> Iterator[dict[str, object]]:
    """The identity of a process that has exited (its pid now free, or another process's)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = cleanup.identity(proc.pid)
    proc.wait()
    yield identity


@pytest.fixture
def group() -> Iterator[subprocess.Popen[bytes]]:
    """A process group left by a run: a shell and its child, in a session of their own."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(processes(group=proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield proc
    finally:
        for member in processes(group=proc.pid):
            os.kill(member.pid, 9)
        proc.wait()


def run_dir(parent: Path, name: str, record: dict[str, object] | None) -> Path:
    path = parent / f"{cleanup.RUN_DIR_PREFIX}{name}"
    (path / "containerd").mkdir(parents=True)
    if record is not None:
        (path / cleanup.OWNER_FILE).write_text(json.dumps(record))
    return path


def test_a_process_is_named_by_pid_and_start_time(dead_owner: dict[str, object]) -> None:
    me = cleanup.identity(os.getpid())
    assert cleanup.alive(me)
    assert not cleanup.alive(dead_owner)
    # the same pid with another start time is another process (the pid was handed on)
    assert not cleanup.alive({**me, "start": int(str(me["start"])) + 1})
    assert not cleanup.alive({**me, "boot": "another-boot"})
    assert cleanup.alive({**me, "pidns": "pid:[1]"})  # another pid namespace: cannot tell, so never touched


def test_the_sweep_cleans_up_after_dead_runs_only(
    tmp_path: Path, dead_owner: dict[str, object], group: subprocess.Popen[bytes]
) -> None:
    assert len(processes(group=group.pid)) == 2
    extra = tmp_path / "swcd-socket-dir"
    extra.mkdir()
    start = cleanup.start_time(group.pid)
    dead = run_dir(
        tmp_path, "dead", {"owner": dead_owner, "groups": [[group.pid, start]], "paths": [str(extra)]}
    )
    kept = run_dir(tmp_path, "kept", {"owner": dead_owner, "keep": True, "groups": []})
    live = run_dir(tmp_path, "live", {"owner": cleanup.identity(os.getpid()), "groups": []})
    unknown = run_dir(tmp_path, "unknown", None)  # no owner record: not ours to judge
    other = tmp_path / "other-dir"
    other.mkdir()
    (other / cleanup.OWNER_FILE).write_text(json.dumps({"owner": dead_owner}))  # not a run directory's name

    # A process outside the recorded groups that still points into the dead run (as containerd's shims get
    # its socket's path): killed too. The same in the live run's directory: left alone.
    shim, bystander = (
        subprocess.Popen(["sh", "-c", "sleep 300; true", str(d / "containerd.sock")], start_new_session=True)
        for d in (dead / "containerd", live / "containerd")
    )
    try:
        assert sorted(cleanup.sweep(tmp_path)) == sorted([dead, kept])
        assert shim.wait(timeout=5) == -9
        assert bystander.poll() is None
    finally:
        for proc in (shim, bystander):
            for member in processes(group=proc.pid):  # the shell and its sleep
                os.kill(member.pid, 9)
            proc.wait()
    assert not dead.exists() and not extra.exists()
    assert processes(group=group.pid) == []  # the recorded group: the shell and its child
    assert kept.is_dir() and (kept / "containerd").is_dir() and not (kept / cleanup.OWNER_FILE).exists()
    assert (live / cleanup.OWNER_FILE).exists() and (live / "containerd").is_dir()
    assert unknown.is_dir() and other.is_dir()
    assert cleanup.sweep(tmp_path) == []  # nothing left to do


def test_a_recorded_group_whose_pid_is_another_process_now_is_not_killed(
    group: subprocess.Popen[bytes],
) -> None:
    start = cleanup.start_time(group.pid)
    assert start is not None
    assert not cleanup.kill_group(group.pid, start - 1)  # recorded for an older process of that pid
    assert len(processes(group=group.pid)) == 2
    assert cleanup.kill_group(group.pid, start)
    assert cleanup.kill_groups([], wait=0) == []


def test_the_watchdog_undoes_what_is_still_recorded_when_its_pipe_ends(
    tmp_path: Path, group: subprocess.Popen[bytes]
) -> None:
    left, released, kept = tmp_path / "left", tmp_path / "released", tmp_path / "kept"
    for path in (left, released, kept):
        path.mkdir()
    messages = [
        {"group": group.pid, "start": cleanup.start_time(group.pid)},
        {"path": str(left)},
        {"path": str(released)},
        {"release": str(released)},
        {"path": str(kept), "keep": True},
    ]
    cleanup.watch(json.dumps(m) + "\n" for m in messages)  # the pipe ends without "done"
    assert processes(group=group.pid) == []
    assert not left.exists() and released.exists() and kept.exists()


def test_a_watchdog_told_done_does_nothing(tmp_path: Path, group: subprocess.Popen[bytes]) -> None:
    messages = [
        {"group": group.pid, "start": cleanup.start_time(group.pid)},
        {"path": str(tmp_path)},
        {"done": True},
    ]
    cleanup.watch(json.dumps(m) + "\n" for m in messages)
    assert len(processes(group=group.pid)) == 2 and tmp_path.exists()


def test_the_program_lookup_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("SOCI_BIN", raising=False)
    lookup = find("soci-nowhere", flag="--soci-bin", env_var="SOCI_BIN")
    assert lookup.path is None
    assert lookup.describe().startswith("$SOCI_BIN (not set); scripts ")
    assert lookup.describe().endswith("(missing); PATH (not on PATH)")
    given = find("soci", explicit=str(tmp_path / "nope"), flag="--soci-bin", env_var="SOCI_BIN")
    assert (
        given.path is None and given.describe() == f"--soci-bin {tmp_path / 'nope'} (missing)"
    )  # no fallback
    program = tmp_path / "bin" / "soci-here"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("SOCI_BIN", str(program))
    assert find("soci-here", env_var="SOCI_BIN").path == str(program)
    monkeypatch.delenv("SOCI_BIN")
    monkeypatch.setenv("PATH", str(program.parent))
    assert find("soci-here", env_var="SOCI_BIN").path == str(program)

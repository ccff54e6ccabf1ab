"""The managed daemon's life cycle and the attach mode, against the real containerd binary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import (
    MISSING_MESSAGE,
    AttachedContainerd,
    ManagedContainerd,
    attach,
    containerd_binary_version,
    find_containerd,
)
from wrapper.errors import ContainerdError, MissingDependencyError


def _our_daemons(config_dir: Path) -> list[int]:
    """Pids of processes whose command line mentions a config under ``config_dir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if os.fsencode(config_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


def test_managed_daemon_starts_answers_and_stops(tmp_path: Path) -> None:
    work = tmp_path / "daemon"
    daemon = ManagedContainerd(work)
    daemon.start()
    try:
        pid = daemon.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
        assert stat.S_ISSOCK(os.stat(daemon.address).st_mode)
        assert daemon.work_dir == work
        assert (work / "config.toml").read_text().count(str(work)) >= 3
        with ContainerdClient(daemon.address) as client:
            info = client.version.get()
        assert info.version == containerd_binary_version(find_containerd() or "containerd")
        assert info.revision
        assert _our_daemons(work) == [pid]
    finally:
        daemon.stop()
    assert daemon.pid is None
    assert not Path(f"/proc/{pid}").exists()
    assert _our_daemons(work) == []
    assert not work.exists()


def test_default_work_dir_is_a_tempdir_and_is_removed() -> None:
    with ManagedContainerd() as daemon:
        work = daemon.work_dir
        assert work.is_dir()
        assert daemon.address.startswith(str(work))
        pid = daemon.pid
    assert not work.exists()
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_keep_work_dir_keeps_the_log(tmp_path: Path) -> None:
    with ManagedContainerd(tmp_path / "kept", keep_work_dir=True) as daemon:
        log_path = daemon.log_path
    assert "containerd successfully booted" in log_path.read_text()


def test_existing_work_dir_survives_with_only_our_files_removed(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not containerd's")
    with ManagedContainerd(tmp_path) as daemon:
        assert (tmp_path / "root").is_dir()
        assert daemon.pid is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_deep_work_dir_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with ManagedContainerd(deep) as daemon:
        assert len(daemon.address) + len(".ttrpc") <= 107
        socket_dir = Path(daemon.address).parent
        with ContainerdClient(daemon.address) as client:
            assert client.version.get().version
    assert not deep.exists()
    assert not socket_dir.exists()


def test_attach_leaves_the_daemon_running(containerd: ManagedContainerd) -> None:
    pid = containerd.pid
    with attach(f"unix://{containerd.address}") as attached:
        assert attached.address == containerd.address
        assert attached.pid is None
        with ContainerdClient(attached.address) as client:
            assert client.version.get().version
    assert containerd.pid == pid
    with ContainerdClient(containerd.address) as client:
        assert client.version.get().version


def test_attach_to_missing_socket_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    with pytest.raises(ContainerdError) as info:
        AttachedContainerd(str(missing)).start()
    assert str(info.value) == f"cannot reach containerd at {missing}: the socket does not exist"


def test_missing_binary_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    work = tmp_path / "work"
    with pytest.raises(MissingDependencyError) as info:
        ManagedContainerd(work).start()
    assert str(info.value) == MISSING_MESSAGE
    assert not work.exists()

    with pytest.raises(MissingDependencyError) as info:
        ManagedContainerd(work, binary=str(tmp_path / "nope" / "containerd")).start()
    assert "\n" not in str(info.value)
    assert str(tmp_path / "nope" / "containerd") in str(info.value)


def test_unwritable_root_is_one_line_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    work = blocker / "work"
    with pytest.raises(ContainerdError) as info:
        ManagedContainerd(work).start()
    message = str(info.value)
    assert "\n" not in message
    assert str(work) in message
    assert "Not a directory" in message


def test_early_exit_reports_the_log_tail(tmp_path: Path) -> None:
    # containerd cannot listen where a non-empty directory occupies its socket path, and exits.
    (tmp_path / "containerd.sock" / "occupied").mkdir(parents=True)
    daemon = ManagedContainerd(tmp_path)
    with pytest.raises(ContainerdError) as info:
        daemon.start()
    message = str(info.value)
    reason = "failed to get listener for main endpoint: is a directory"
    assert message == f"containerd exited during startup (status 1): {reason}"
    assert "\n" not in message
    assert info.value.detail and "level=info" in info.value.detail and "listener" in info.value.detail
    assert daemon.pid is None
    assert not (tmp_path / "root").exists()


def test_binary_version_parsing() -> None:
    path = find_containerd()
    assert path is not None
    version = containerd_binary_version(path)
    assert version[0].isdigit() and "." in version
    with pytest.raises(MissingDependencyError):
        containerd_binary_version("/bin/true")

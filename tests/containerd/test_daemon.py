"""The managed daemon's life cycle and the attach mode, against each supported real containerd binary
(``any_containerd_bin``: the system's 1.x, and the 2.x that scripts/bootstrap.sh builds)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers import processes
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import (
    MISSING_MESSAGE,
    AttachedContainerd,
    ManagedContainerd,
    attach,
    containerd_binary_version,
    major_version,
    render_config,
)
from wrapper.core.errors import ContainerdError, MissingDependencyError


def _our_daemons(config_dir: Path) -> list[int]:
    """Pids of processes whose command line mentions a config under ``config_dir``."""
    return [p.pid for p in processes(config_dir)]


def test_managed_daemon_starts_answers_and_stops(tmp_path: Path, any_containerd_bin: str) -> None:
    work = tmp_path / "daemon"
    daemon = ManagedContainerd(work, binary=any_containerd_bin)
    daemon.start()
    try:
        pid = daemon.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
        assert stat.S_ISSOCK(os.stat(daemon.address).st_mode)
        assert daemon.work_dir == work
        config = (work / "config.toml").read_text()
        assert config.count(str(work)) >= 3
        version = containerd_binary_version(any_containerd_bin)
        assert daemon.binary_version == version
        # 1.x reads config version 2; 2.x version 3 (no migration).
        assert f"version = {3 if major_version(version) >= 2 else 2}\n" in config
        with ContainerdClient(daemon.address) as client:
            info = client.version.get()
        assert info.version.removeprefix("v") == version  # 2.x answers "v2.2.6", 1.6 "1.6.20~ds1"
        assert info.revision
        assert _our_daemons(work) == [pid]
    finally:
        daemon.stop()
    assert daemon.pid is None
    assert not Path(f"/proc/{pid}").exists()
    assert _our_daemons(work) == []
    assert not work.exists()


def test_default_work_dir_is_a_tempdir_and_is_removed(any_containerd_bin: str) -> None:
    with ManagedContainerd(binary=any_containerd_bin) as daemon:
        work = daemon.work_dir
        assert work.is_dir()
        assert daemon.address.startswith(str(work))
        pid = daemon.pid
    assert not work.exists()
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_keep_work_dir_keeps_the_log(tmp_path: Path, any_containerd_bin: str) -> None:
    with ManagedContainerd(tmp_path / "kept", binary=any_containerd_bin, keep_work_dir=True) as daemon:
        log_path = daemon.log_path
    assert "containerd successfully booted" in log_path.read_text()


def test_config_gives_no_warnings(tmp_path: Path, any_containerd_bin: str) -> None:
    """Our config suits the release: no migration from an older config version, no unknown keys, no plugin
    that fails to load for want of a disabled one, no deprecation; nothing above level info at all."""
    with ManagedContainerd(tmp_path / "kept", binary=any_containerd_bin, keep_work_dir=True) as daemon:
        with ContainerdClient(daemon.address) as client:
            assert client.version.get().version
        log_path = daemon.log_path
    lines = log_path.read_text().splitlines()
    assert any("containerd successfully booted" in line for line in lines)
    loud = [
        line for line in lines if "level=" in line and "level=info" not in line and "level=debug" not in line
    ]
    assert loud == []


def test_existing_work_dir_survives_with_only_our_files_removed(
    tmp_path: Path, any_containerd_bin: str
) -> None:
    (tmp_path / "mine.txt").write_text("not containerd's")
    with ManagedContainerd(tmp_path, binary=any_containerd_bin) as daemon:
        assert (tmp_path / "root").is_dir()
        assert daemon.pid is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_deep_work_dir_gets_a_short_socket(tmp_path: Path, any_containerd_bin: str) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with ManagedContainerd(deep, binary=any_containerd_bin) as daemon:
        assert len(daemon.address) + len(".ttrpc") <= 107
        socket_dir = Path(daemon.address).parent
        with ContainerdClient(daemon.address) as client:
            assert client.version.get().version
    assert not deep.exists()
    assert not socket_dir.exists()


def test_attach_leaves_the_daemon_running(any_containerd: ManagedContainerd) -> None:
    pid = any_containerd.pid
    with attach(f"unix://{any_containerd.address}") as attached:
        assert attached.address == any_containerd.address
        assert attached.pid is None
        with ContainerdClient(attached.address) as client:
            assert client.version.get().version
    assert any_containerd.pid == pid
    with ContainerdClient(any_containerd.address) as client:
        assert client.version.get().version


def test_attach_to_missing_socket_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    with pytest.raises(ContainerdError) as info:
        AttachedContainerd(str(missing)).start()
    assert str(info.value).startswith(f"cannot reach containerd at {missing}: the socket does not exist (")


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


def test_early_exit_reports_the_log_tail(tmp_path: Path, any_containerd_bin: str) -> None:
    # containerd cannot listen where a non-empty directory occupies its socket path, and exits.
    (tmp_path / "containerd.sock" / "occupied").mkdir(parents=True)
    daemon = ManagedContainerd(tmp_path, binary=any_containerd_bin)
    with pytest.raises(ContainerdError) as info:
        daemon.start()
    message = str(info.value)
    # 1.6: "...main endpoint: is a directory"; 2.x also names the path: "...main endpoint: failed to create
    # unix socket on PATH: is a directory".
    assert message.startswith("containerd exited during startup (status 1): failed to get listener for main")
    assert message.endswith(": is a directory")
    assert "\n" not in message
    assert info.value.detail and "level=info" in info.value.detail and "listener" in info.value.detail
    assert daemon.pid is None
    assert not (tmp_path / "root").exists()


def test_binary_version_parsing(any_containerd_bin: str, containerd_release: str) -> None:
    version = containerd_binary_version(any_containerd_bin)
    assert version[0].isdigit() and "." in version
    assert major_version(version) == (2 if containerd_release == "containerd2" else 1)
    with pytest.raises(MissingDependencyError):
        containerd_binary_version("/bin/true")


def test_major_version_and_config_format(tmp_path: Path) -> None:
    assert [major_version(v) for v in ("1.6.20~ds1", "1.7.27", "v2.2.6", "2.0.0-rc.1", "10.1.0")] == [
        1,
        1,
        2,
        2,
        10,
    ]
    with pytest.raises(ValueError):
        major_version("unknown")
    root, state, address = tmp_path / "root", tmp_path / "state", str(tmp_path / "c.sock")
    one = render_config(root=root, state=state, address=address, major=1)
    two = render_config(root=root, state=state, address=address, major=2)
    assert "version = 2\n" in one and "io.containerd.monitor.v1.cgroups" in one
    assert "version = 3\n" in two and "io.containerd.monitor.task.v1.cgroups" in two
    assert "io.containerd.monitor.v1.cgroups" not in two and "io.containerd.cri.v1.runtime" not in one


def test_a_program_that_is_not_containerd_is_one_line(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with pytest.raises(ContainerdError) as info:
        ManagedContainerd(work, binary="/bin/true").start()
    message = str(info.value)
    assert message.startswith("cannot start /bin/true: /bin/true is not containerd: its --version says ")
    assert "\n" not in message
    assert not work.exists()

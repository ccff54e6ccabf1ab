"""Fail fast: what a run needs (soci, containerd) is checked before any network or daemon work, and a
registry that refuses connections is given up on quickly. Each case: one line, its documented exit code."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer, free_port
from tests.helpers import run_cli
from tests.proxy import HttpProxy
from wrapper.core.errors import ContainerdError, ExitCode, MissingDependencyError
from wrapper.core.options import DaemonOptions
from wrapper.run.session import check_containerd
from wrapper.soci.binary import SOCI_RELEASE, check_soci


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return str(path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("soci-wrapper: error:")]


@pytest.fixture
def proxy(registry: RegistryServer):
    """Counts requests: a preflight failure must not make one."""
    with HttpProxy(registry.host) as p:
        yield p


def assert_fails_before_the_registry(proxy: HttpProxy, code: int, *args: str) -> str:
    proc = run_cli("index", f"{proxy.host}/app/x:v1", *args, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proxy.requests == []
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("  | ")]  # detail
    assert len(lines) == 1 and len(error_lines(proc.stderr)) == 1, proc.stderr
    return lines[0]


def test_soci_not_found(proxy: HttpProxy) -> None:
    line = assert_fails_before_the_registry(
        proxy, ExitCode.MISSING_DEPENDENCY, "--soci-bin", "/nonexistent/soci"
    )
    assert "soci not found at /nonexistent/soci" in line and "bootstrap" in line


def test_soci_not_executable(proxy: HttpProxy, tmp_path: Path) -> None:
    path = tmp_path / "soci"
    path.write_text("not a program")
    line = assert_fails_before_the_registry(proxy, ExitCode.MISSING_DEPENDENCY, "--soci-bin", str(path))
    assert f"soci not found at {path}" in line


def test_a_binary_that_is_not_soci(proxy: HttpProxy, tmp_path: Path) -> None:
    line = assert_fails_before_the_registry(proxy, ExitCode.MISSING_DEPENDENCY, "--soci-bin", "/bin/true")
    assert "/bin/true is not a soci binary" in line
    other = script(tmp_path, "other", "echo 'docker version 27'")
    line = assert_fails_before_the_registry(proxy, ExitCode.MISSING_DEPENDENCY, "--soci-bin", other)
    assert "is not a soci binary" in line


def test_soci_of_an_unsupported_release(tmp_path: Path) -> None:
    old = script(tmp_path, "soci", "echo 'soci version v0.9.0 0123abcd'")
    with pytest.raises(MissingDependencyError) as info:
        check_soci(old)
    assert str(info.value).startswith(f"soci at {old} is v0.9.0; soci-wrapper supports v0.15.x")
    assert SOCI_RELEASE in str(info.value)


def test_the_real_soci_passes(soci_bin: str) -> None:
    assert check_soci(soci_bin) == str(Path(soci_bin).resolve())


def test_containerd_binary_missing(proxy: HttpProxy, soci_bin: str) -> None:
    line = assert_fails_before_the_registry(
        proxy,
        ExitCode.MISSING_DEPENDENCY,
        "--soci-bin",
        soci_bin,
        "--containerd-bin",
        "/nonexistent/containerd",
    )
    assert "containerd not found" in line and "/nonexistent/containerd" in line


def test_attached_socket_missing(proxy: HttpProxy, soci_bin: str) -> None:
    line = assert_fails_before_the_registry(
        proxy, ExitCode.CONTAINERD, "--soci-bin", soci_bin, "--containerd-address", "/nonexistent.sock"
    )
    assert line == (
        "soci-wrapper: error: cannot reach containerd at /nonexistent.sock: the socket does not exist"
        " (start containerd there, or leave out --containerd-address and soci-wrapper starts its own)"
    )


def test_attached_socket_that_is_not_containerd(proxy: HttpProxy, soci_bin: str, tmp_path: Path) -> None:
    path = tmp_path / "not-containerd.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        line = assert_fails_before_the_registry(
            proxy, ExitCode.CONTAINERD, "--soci-bin", soci_bin, "--containerd-address", str(path)
        )
    finally:
        listener.close()
    assert f"containerd at {path}" in line


def test_pull_checks_containerd_first(proxy: HttpProxy) -> None:
    proc = run_cli("pull", f"{proxy.host}/app/x:v1", "--containerd-address", "/nonexistent.sock")
    assert proc.returncode == ExitCode.CONTAINERD
    assert proxy.requests == []


def test_a_managed_containerd_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ContainerdError) as info:
        check_containerd(DaemonOptions())
    assert "needs root" in str(info.value) and "--containerd-address" in str(info.value)
    assert info.value.exit_code == ExitCode.CONTAINERD


def test_a_registry_that_refuses_connections_is_given_up_quickly(soci_bin: str) -> None:
    proc = run_cli("index", f"127.0.0.1:{free_port()}/app/x:v1", "--soci-bin", soci_bin, timeout=60)
    assert proc.returncode == ExitCode.REGISTRY
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "connection refused (gave up after 3 attempts" in errors[0], proc.stderr
    retries = [line for line in proc.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 2 and all(len(line) < 120 for line in retries), retries
    assert all(line.startswith("warning: ") for line in retries), retries  # as the tool's other warnings

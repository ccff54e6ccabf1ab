"""gRPC failures become the project's exceptions with one-line messages (real sockets, real daemon)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.deps import unavailable
from wrapper.containerd.channel import Connection
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.core.errors import ContainerdError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]


def test_socket_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    with ContainerdClient(f"unix://{missing}", timeout=5) as client, pytest.raises(ContainerdError) as info:
        client.version.get()
    assert str(info.value) == f"cannot reach containerd at {missing}: the socket does not exist"
    assert "UNAVAILABLE" in (info.value.detail or "")


def test_socket_nobody_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound but never listening: connections are refused
        with ContainerdClient(str(path), timeout=5) as client, pytest.raises(ContainerdError) as info:
            client.images.list()
    assert (
        str(info.value) == f"cannot reach containerd at {path}: connection refused (is the daemon running?)"
    )


@pytest.fixture
def silent_server(tmp_path: Path) -> Iterator[Path]:
    """A unix socket that accepts connections and never says anything."""
    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_deadline_exceeded(silent_server: Path) -> None:
    with ContainerdClient(str(silent_server), timeout=0.5) as client, pytest.raises(ContainerdError) as info:
        client.version.get()
    assert str(info.value) == "containerd did not answer version.Version within 0.5s"


def test_not_found_is_not_found_error(containerd_client: ContainerdClient) -> None:
    with pytest.raises(NotFoundError) as info:
        containerd_client.images.get("no/such:image")
    assert "\n" not in str(info.value)
    assert "no/such:image" in str(info.value)
    with pytest.raises(NotFoundError):
        containerd_client.content.info("sha256:" + "1" * 64)
    assert containerd_client.content.status("no-such-ingest") is None


def test_unimplemented_names_the_method(containerd: ManagedContainerd) -> None:
    # The tasks service is disabled in our managed daemon's config.
    conn = Connection(containerd.address, "default", timeout=5)
    try:
        call = conn.channel.unary_unary(
            "/containerd.services.tasks.v1.Tasks/List",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(ContainerdError) as info:
            conn.unary("tasks.List", call, b"")
    finally:
        conn.close()
    assert str(info.value) == ("containerd does not implement tasks.List (plugin disabled or daemon too old)")


def _run_unprivileged(setpriv: str, *args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter with ``args`` as user and group 65534 (nobody), with no supplementary groups."""
    return subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            # Reading (the checkout, the venv) stays allowed wherever they live; writing, and so connecting
            # to the root-only socket, does not.
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            sys.executable,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_permission_denied_on_the_socket_mentions_root(containerd: ManagedContainerd) -> None:
    if os.geteuid() != 0:
        unavailable("needs root to switch to an unprivileged user")
    setpriv = "/usr/bin/setpriv"
    if not os.path.exists(setpriv):
        unavailable("setpriv (util-linux) is not installed")
    # Whether the unprivileged user can run this Python and import the package at all is decided by a run
    # of its own, so a failure of the run under test (a traceback saying "Permission denied") is never
    # mistaken for an unusable setup.
    probe = _run_unprivileged(
        setpriv, "-c", "import os, wrapper.containerd.client, wrapper.core.errors; print(os.geteuid())"
    )
    if probe.returncode != 0 or probe.stdout.strip() != "65534":
        unavailable(
            f"the unprivileged user cannot run this Python and import the package "
            f"(exit {probe.returncode}): {probe.stderr.strip()[-300:]}"
        )
    script = (
        "import sys\n"
        "from wrapper.containerd.client import ContainerdClient\n"
        "from wrapper.core.errors import ContainerdError\n"
        "try:\n"
        "    ContainerdClient(sys.argv[1], timeout=5).version.get()\n"
        "except ContainerdError as exc:\n"
        "    print(str(exc))\n"
    )
    proc = _run_unprivileged(setpriv, "-c", script, containerd.address)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    message = proc.stdout.strip()
    assert message.count("\n") == 0
    assert message.startswith(f"cannot reach containerd at {containerd.address}: permission denied")
    assert "root" in message


def test_rpc_error_without_status_is_still_mapped() -> None:
    from wrapper.containerd.channel import map_rpc_error

    error = map_rpc_error(grpc.RpcError(), method="x.Y", address="/nowhere", timeout=None)
    assert isinstance(error, ContainerdError)
    assert str(error) == "containerd x.Y failed: UNKNOWN: "

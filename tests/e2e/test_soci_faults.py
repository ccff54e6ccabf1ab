"""soci itself failing: hanging past --soci-timeout, killed, exiting non-zero, and the run signalled while soci
works. The real soci runs every command but the one a fault-injection shim (tests.helpers.faulty_soci) breaks.
Each ends with one clear line, containerd stopped, no process left, the work directory removed, and nothing
pushed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, ROOT, faulty_soci, our_containerd_processes, processes, push, run_cli, seed_for
from tests.imagefactory import LayerSpec, build_image
from wrapper.core.errors import ExitCode
from wrapper.core.models import SOCI_INDEX_V1
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci


@pytest.fixture
def client():
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


@pytest.fixture
def ref(tmp_path: Path, registry: RegistryServer, client: RegistryClient, request) -> Reference:
    image = build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed_for(request))])
    return push(registry, client, f"socifaults/app-{seed_for(request):x}", image)


def processes_running(text: str) -> list[str]:
    return [p.cmdline for p in processes(text)]


def assert_clean(work: Path, shim: str, client: RegistryClient, ref: Reference) -> None:
    assert our_containerd_processes(work) == []
    assert processes_running(shim) == []  # soci and what it started
    assert list(work.iterdir()) == []
    assert client.get_referrers(ref, ref.digest or "", artifact_type=SOCI_INDEX_V1) == []


@pytest.mark.parametrize(
    ("command", "behaviour", "message"),
    [
        ("create", "hang", "soci create did not finish within 2 s and was stopped"),
        ("create", "kill", "soci create was killed by SIGKILL"),
        ("push", "hang", "soci push did not finish within 2 s and was stopped"),
        ("push", "fail", "soci push failed (exit 1): injected failure"),
    ],
)
def test_soci_fault_is_one_line_and_cleans_up(
    tmp_path: Path,
    client: RegistryClient,
    ref: Reference,
    soci_bin: str,
    command: str,
    behaviour: str,
    message: str,
) -> None:
    shim = faulty_soci(tmp_path, soci_bin, **{command: behaviour})
    work = tmp_path / "work"
    proc = run_cli(
        "index", str(ref), "--soci-bin", shim, "--soci-timeout", "2", "--min-layer-size", "1MiB",
        "--work-dir", str(work),
    )  # fmt: skip
    assert proc.returncode == ExitCode.SOCI, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("soci-wrapper: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"soci-wrapper: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "warning: soci push" not in proc.stderr  # none of these is worth another attempt
    assert_clean(work, shim, client, ref)


@pytest.mark.parametrize(("command", "sig"), [("create", signal.SIGTERM), ("push", signal.SIGINT)])
def test_signal_while_soci_works(
    tmp_path: Path, client: RegistryClient, ref: Reference, soci_bin: str, command: str, sig: signal.Signals
) -> None:
    shim = faulty_soci(tmp_path, soci_bin, **{command: "hang"})
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    argv = [
        sys.executable, "-m", "wrapper.cli.main", "index", str(ref), "--soci-bin", shim, "--min-layer-size", "1MiB",
        "--work-dir", str(work),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not any(command in p.split() for p in processes_running(shim)):  # soci's `command` runs
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert stopped_after < 5, stopped_after
    assert err.strip().splitlines()[-1] == "soci-wrapper: error: interrupted"
    assert_clean(work, shim, client, ref)

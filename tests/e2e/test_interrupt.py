"""Stopping a run midway (CodeBuild's SIGTERM, Ctrl-C) leaves no daemon and no files behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_index import our_containerd_processes
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, ROOT, push
from tests.imagefactory import Image, LayerSpec, build_image
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Large enough that the pull is still running when the signal arrives (each run has its own containerd)."""
    return build_image(tmp_path_factory.mktemp("img"), [LayerSpec(96 * MIB, seed=s) for s in (41, 42)])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_pull_cleans_up(
    tmp_path: Path, registry: RegistryServer, big_image: Image, sig: signal.Signals
) -> None:
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        ref = push(registry, client, "interrupt/app", big_image)
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli", "pull", str(ref), "--work-dir", str(work), "--full"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in proc.stderr:  # wait until a layer transfer has started
            if "start  layer" in line or time.monotonic() > deadline:
                break
        assert our_containerd_processes(work), "containerd should be running during the pull"
        proc.send_signal(sig)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=60)
        print(f"stopped {time.monotonic() - signalled:.2f} s after the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert our_containerd_processes(work) == []
    assert list(work.iterdir()) == []

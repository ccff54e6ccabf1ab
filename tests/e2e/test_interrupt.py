"""Stopping a run midway (CodeBuild's SIGTERM, Ctrl-C) leaves no daemon and no files behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, ROOT, our_containerd_processes, push
from tests.imagefactory import Image, LayerSpec, build_image
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

LAYER_SIZE = 8 * MIB
# Each layer download is held to this rate by a proxy, so a layer takes about 8 s: the pull is certainly still
# running when the signal arrives, however fast the machine.
LAYER_RATE = 1 * MIB
START_TIMEOUT = 60.0  # for the CLI to start its containerd and the first layer bytes to flow
STOP_TIMEOUT = 60.0  # for the CLI to unwind after the signal


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Two layers, each far more than the throttled transfer can move before the signal."""
    return build_image(tmp_path_factory.mktemp("img"), [LayerSpec(LAYER_SIZE, seed=s) for s in (41, 42)])


def _layer_gets(proxy: HttpProxy, image: Image) -> dict[str, list[RecordedRequest]]:
    requests = proxy.requests
    return {
        layer.digest: [r for r in requests if r.method == "GET" and layer.digest in r.path]
        for layer in image.layers
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_pull_cleans_up(
    tmp_path: Path, registry: RegistryServer, big_image: Image, sig: signal.Signals
) -> None:
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        ref = push(registry, client, "interrupt/app", big_image)
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    layers = "|".join(re.escape(layer.digest) for layer in big_image.layers)
    proc: subprocess.Popen[str] | None = None
    try:
        with HttpProxy(registry.host) as proxy:
            proxy.throttle(rf"/blobs/({layers})", LAYER_RATE, method="GET")
            via = Reference(proxy.host, ref.repository, digest=ref.digest)
            # Output goes to files, not pipes: nothing here blocks on a read, every wait has a deadline.
            with out_path.open("w") as out, err_path.open("w") as err_file:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "wrapper.cli.main",
                        "pull",
                        str(via),
                        "--work-dir",
                        str(work),
                        "--full",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err_file,
                    text=True,
                    cwd=ROOT,
                    env=env,
                )
            # Wait until layer bytes are flowing through the proxy: the pull is under way.
            deadline = time.monotonic() + START_TIMEOUT
            while not any(r.body_bytes > 0 for gets in _layer_gets(proxy, big_image).values() for r in gets):
                if proc.poll() is not None:
                    why = f"the pull ended (exit {proc.returncode}) before a layer byte moved"
                    pytest.fail(f"{why}:\n{err_path.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no layer byte moved within {START_TIMEOUT:.0f} s:\n{err_path.read_text()}")
                time.sleep(0.05)
            assert our_containerd_processes(work), "containerd should be running during the pull"
            proc.send_signal(sig)
            signalled = time.monotonic()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the CLI did not stop within {STOP_TIMEOUT:.0f} s of {sig.name}")
            print(f"stopped {time.monotonic() - signalled:.2f} s after {sig.name}")
            gets = _layer_gets(proxy, big_image)
        err = err_path.read_text()
        # The signal landed mid-pull: a layer was being transferred, and no layer was transferred whole.
        assert any(gets.values()), "no layer download was started"
        for layer in big_image.layers:
            relayed = sum(r.body_bytes for r in gets[layer.digest])
            assert relayed < layer.size, f"{layer.digest} was downloaded completely before the signal"
            assert all(r.throttled for r in gets[layer.digest])
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err, err
        assert our_containerd_processes(work) == []
        assert list(work.iterdir()) == []
    finally:  # whatever failed, leave neither the CLI nor its containerd running for the rest of the session
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in our_containerd_processes(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

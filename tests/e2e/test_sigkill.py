"""soci-wrapper killed with SIGKILL (what a CI build timeout or the OOM killer does) leaves nothing running, and
the next run leaves no run directory and no mount: during the pull, during ``soci create`` and during verify's
consumer level (soci-snapshotter-grpc with FUSE mounts), with the real containerd, registry, soci and
snapshotter (a shim soci that hangs in ``create`` with a child of its own, tests.helpers.faulty_soci).

Two cases each:

* ``tool``: only soci-wrapper is killed. Every process it started (containerd, soci and soci's own child, the
  snapshotter, the watchdog) is gone within seconds, and so is its run directory.
* ``tool-and-watchdog``: its watchdog is killed first. The children it forked die with it (the parent-death
  signal); what they started (soci's child) and the run directory are left for the next run, which kills the
  process groups recorded in the run directory's owner record and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_verify import INDEX_ARGS, LAYERS
from tests.fixtures.registry import RegistryServer
from tests.fixtures.snapshotter import snapshotter_program
from tests.helpers import (
    MIB,
    ROOT,
    faulty_soci,
    process_tree,
    processes,
    push,
    run_cli,
    seed_for,
    still_running,
)
from tests.imagefactory import LayerSpec, build_image
from tests.proxy import HttpProxy
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.system.cleanup import OWNER_FILE, mounts, unmount_under

pytestmark = pytest.mark.soci

START_TIMEOUT = 90.0  # for the run to reach the stage the test kills it in
GONE_WITHIN = 15.0  # for what it started to go after the kill
LAYER_SIZE = 8 * MIB
LAYER_RATE = 1 * MIB  # the pull of one layer takes 8 s: certainly under way when the kill comes
MODES = ["tool", "tool-and-watchdog"]


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


@dataclass
class Run:
    proc: subprocess.Popen[str]
    work: Path
    tree: dict[int, int] = field(default_factory=dict)  # what it had started when it was killed
    groups: list[int] = field(default_factory=list)  # the process groups its owner record named


@contextlib.contextmanager
def tool(tmp_path: Path, work: Path, *args: str) -> Iterator[Run]:
    """``soci-wrapper ARGS --work-dir WORK`` in the background; whatever the test's outcome, nothing it started
    is left afterwards (a failing test must not leave daemons for the others)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrapper.cli.main", *args, "--work-dir", str(work)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
    run = Run(proc, work)
    try:
        yield run
    finally:
        if proc.poll() is None:
            run.tree.update(process_tree(proc.pid))
            proc.kill()
        proc.wait(timeout=30)
        for pid in [*still_running(run.tree), *(p.pid for p in processes(work))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pgid in run.groups:
            for member in processes(group=pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, signal.SIGKILL)
        unmount_under(work)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if proc.poll() is not None:
            err = (tmp_path / "err").read_text()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {START_TIMEOUT:.0f} s:\n{(tmp_path / 'err').read_text()}")
        time.sleep(0.02)


def watchdog_of(tree: dict[int, int]) -> int:
    [pid] = [p for p, cmdline in still_running(tree).items() if "cleanup.py watch" in cmdline]
    return pid


def owner_record(work: Path) -> dict[str, Any]:
    [run_dir] = [p for p in work.iterdir() if p.name.startswith("soci-wrapper-")]
    record = json.loads((run_dir / OWNER_FILE).read_text())
    assert isinstance(record, dict)
    return record


def mounts_under(work: Path) -> list[str]:
    return [m for m, _ in mounts() if m.startswith(str(work))]


def kill_and_check(run: Run, mode: str, *, leaves: str = "") -> dict[str, Any]:
    """SIGKILL the tool (and first its watchdog, in mode ``tool-and-watchdog``); then check what must be gone
    at once. ``leaves``: a command line left running until the next run in that mode (a grandchild that the
    parent-death signal does not reach). Returns the run's owner record as it was before the kill."""
    proc, work = run.proc, run.work
    record = owner_record(work)
    run.groups = [pgid for pgid, _ in record["groups"]]
    assert record["owner"]["pid"] == proc.pid and run.groups, record
    tree = process_tree(proc.pid)
    run.tree.update(tree)
    assert tree, "the tool had started nothing"
    if mode == "tool-and-watchdog":
        watchdog = watchdog_of(tree)
        os.kill(watchdog, signal.SIGKILL)
        tree.pop(watchdog)
    proc.kill()
    proc.wait(timeout=10)
    killed_at = time.monotonic()
    deadline = killed_at + GONE_WITHIN
    # With its watchdog alive, everything goes (the watchdog kills the grandchild too, a moment after the rest):
    # wait for all of it. With the watchdog killed first, the grandchild stays until the next run.
    keeps = leaves if mode == "tool-and-watchdog" else ""
    expected_left = {p for p, cmd in still_running(tree).items() if keeps and keeps in cmd}

    def settled() -> bool:  # what must go is gone (and, with the watchdog alive, its run directory too)
        if set(still_running(tree)) - expected_left:
            return False
        return mode != "tool" or not any(p.name.startswith("soci-wrapper-") for p in work.iterdir())

    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = still_running(tree)
    print(
        f"{mode}: {len(tree)} processes, all but {len(left)} gone {time.monotonic() - killed_at:.2f} s after"
    )
    if mode == "tool":
        assert left == {}, left  # containerd, soci and its child, the snapshotter, the watchdog: all gone
        assert not any(p.name.startswith("soci-wrapper-") for p in work.iterdir())  # the watchdog removed it
    else:
        assert set(left) == expected_left, left  # the children of the tool died with it
        assert any(p.name.startswith("soci-wrapper-") for p in work.iterdir())  # left for the next run
    return record


def next_run_cleans_up(registry: RegistryServer, ref: Reference, work: Path, record: dict[str, Any]) -> None:
    """Any command with the same --work-dir: afterwards no run directory, no mount, no recorded group left."""
    proc = run_cli("verify", str(ref), "--level", "registry", "--json", "--work-dir", str(work))
    assert proc.returncode in (0, 10), proc.stderr  # whether the image has an index does not matter here
    assert [p.name for p in work.iterdir()] == []
    assert mounts_under(work) == []
    for pgid, _ in record["groups"]:
        assert processes(group=pgid) == [], pgid
    assert processes(work) == []


# -- during the pull -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_sigkill_during_the_pull(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    seed = seed_for(request)
    image = build_image(
        tmp_path / "img", [LayerSpec(LAYER_SIZE, seed=seed), LayerSpec(LAYER_SIZE, seed=seed + 1)]
    )
    ref = push(registry, client, "sigkill/pull", image)
    work = tmp_path / "work"
    layers = "|".join(re.escape(layer.digest) for layer in image.layers)

    def layer_bytes() -> int:
        return sum(r.body_bytes for r in proxy.requests if r.method == "GET" and re.search(layers, r.path))

    with HttpProxy(registry.host) as proxy:
        proxy.throttle(rf"/blobs/({layers})", LAYER_RATE, method="GET")
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        args = ["index", str(via), "--soci-bin", soci_bin, "--min-layer-size", "1MiB"]
        with tool(tmp_path, work, *args) as run:
            wait_until(lambda: layer_bytes() > 0, run.proc, "layer bytes flowed", tmp_path)
            record = kill_and_check(run, mode)
            assert layer_bytes() < 2 * LAYER_SIZE  # it landed mid-pull
            next_run_cleans_up(registry, ref, work, record)


# -- during soci create ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_sigkill_during_soci_create(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    image = build_image(tmp_path / "img", [LayerSpec(2 * MIB, seed=seed_for(request))])
    ref = push(registry, client, "sigkill/create", image)
    work = tmp_path / "work"
    shim = faulty_soci(tmp_path, soci_bin, create="hang")  # `sleep 300 & wait`: soci with a child of its own

    def creating() -> bool:  # the shim runs `create`, and its child (`sleep`, in its group) has started
        return any(len(processes(group=p.pgid)) > 1 for p in processes(shim) if "create" in p.argv)

    args = ["index", str(ref), "--soci-bin", shim, "--min-layer-size", "1MiB"]
    with tool(tmp_path, work, *args) as run:
        wait_until(creating, run.proc, "soci create ran", tmp_path)
        record = kill_and_check(run, mode, leaves="sleep 300")
        if mode == "tool-and-watchdog":  # soci's child is the next run's to stop
            assert [p.argv for g in run.groups for p in processes(group=g)] == [("sleep", "300")]
        next_run_cleans_up(registry, ref, work, record)


# -- during verify's consumer level ----------------------------------------------------------------------------
@pytest.fixture
def indexed(tmp_path: Path, registry: RegistryServer, soci_bin: str) -> Reference:
    """An image with files in its layers, indexed V2 (the snapshotter's default pull mode)."""
    image = build_image(tmp_path / "img", LAYERS)
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        ref = push(registry, client, "sigkill/verify", image)
    proc = run_cli("index", str(ref), "--soci-bin", soci_bin, *INDEX_ARGS, "--soci-version", "V2",
                   "--output-tag", "v1-soci")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return Reference(registry.host, ref.repository, tag="v1-soci")


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_during_the_consumer_level(
    tmp_path: Path, registry: RegistryServer, indexed: Reference, soci_bin: str, mode: str
) -> None:
    snapshotter = snapshotter_program()
    work = tmp_path / "work"

    def fuse_mounted() -> bool:
        for p in processes(work):
            if "soci-snapshotter-grpc" in p.cmdline:
                with contextlib.suppress(OSError):
                    if "fuse.rawBridge" in Path(f"/proc/{p.pid}/mountinfo").read_text():
                        return True
        return False

    args = ["verify", str(indexed), "--soci-bin", soci_bin, "--snapshotter-bin", snapshotter, "--json"]
    with tool(tmp_path, work, *args) as run:
        wait_until(fuse_mounted, run.proc, "the snapshotter mounted a layer", tmp_path)
        record = kill_and_check(run, mode)
        assert mounts_under(work) == []  # the FUSE mounts lived in the snapshotter's own mount namespace
        next_run_cleans_up(registry, indexed, work, record)

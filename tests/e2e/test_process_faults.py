"""Faults of the processes around a run, through the command line with the real containerd, registries and soci
(a fault-injection shim, tests.helpers.faulty_soci, makes one soci command hang where a test needs soci busy):

* the managed containerd killed (SIGKILL) during the pull and during ``soci create``;
* SIGINT and SIGTERM during ``soci convert`` and during the project's own V2 push;
* two runs at once, each with its own managed containerd, or both attached to one daemon (one namespace or
  two), on the same image and on different ones;
* the work directory's file system full (a 5 MiB tmpfs in a private mount namespace).

Each ends with one clear line and a documented exit code, no process left, the work directory removed, and
nothing half-pushed in the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_compat import check_v1_index, dangling_references
from tests.fixtures.deps import unavailable
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, ROOT, faulty_soci, our_containerd_processes, processes, push, seed_for
from tests.imagefactory import Image, LayerSpec, build_image
from tests.proxy import HttpProxy
from wrapper.containerd.channel import DaemonExitedError, daemon_exit_error
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.core.errors import ExitCode
from wrapper.core.models import SOCI_INDEX_V1, SOCI_LAYER_DIGEST_ANNOTATION
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.system.supervisor import supervisor

pytestmark = pytest.mark.soci

START_TIMEOUT = 60.0  # for a run to reach the point where a test acts on it
STOP_WITHIN = 5.0  # after a signal, the run must be gone within this
# The pull that containerd dies under: a layer held to LAYER_RATE by the proxy takes 8 s, so the kill lands
# mid-pull. The run notices at its next 1 MiB chunk (a second at most here), and the pull tries the blob 4
# more times (about 4 s): hence the bound on how long it may take to stop.
LAYER_SIZE = 8 * MIB
LAYER_RATE = 1 * MIB
KILLED_STOP_WITHIN = 15.0
ERROR_PREFIX = "soci-wrapper: error:"


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def image_of(tmp_path: Path, seed: int, size: int = 2 * MIB) -> Image:
    return build_image(tmp_path / "img", [LayerSpec(size, seed=seed), LayerSpec(100 * 1024, seed=seed + 1)])


# -- processes -------------------------------------------------------------------------------------------
def processes_with(text: str) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the processes (but this one) whose command line contains ``text``."""
    return [(p.pid, list(p.argv)) for p in processes(text)]


def managed_daemon_pids(work: Path) -> list[int]:
    """The containerd daemons (not soci, whose arguments name the socket) started with a config under ``work``."""
    return [pid for pid, argv in processes_with(str(work)) if Path(argv[0]).name == "containerd"]


@contextlib.contextmanager
def cli_process(tmp_path: Path, *args: str, name: str = "cli") -> Iterator[subprocess.Popen[str]]:
    """``soci-wrapper ARGS`` started in the background (output to files: nothing blocks on a pipe); killed, with
    any containerd it started (found by its ``--work-dir``), if the test ends first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    with (tmp_path / f"{name}.out").open("w") as out, (tmp_path / f"{name}.err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrapper.cli.main", *args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
            if "--work-dir" in args:  # what it started is now an orphan: stop it for the rest of the session
                for pid in managed_daemon_pids(Path(args[args.index("--work-dir") + 1])):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def output_of(tmp_path: Path, name: str = "cli") -> tuple[str, str]:
    return (tmp_path / f"{name}.out").read_text(), (tmp_path / f"{name}.err").read_text()


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{output_of(tmp_path)[1]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {START_TIMEOUT:.0f} s:\n{output_of(tmp_path)[1]}")
        time.sleep(0.02)


def stopped_after(proc: subprocess.Popen[str], since: float, limit: float = 30.0) -> float:
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not stop within {limit:.0f} s")
    return time.monotonic() - since


def assert_nothing_left(work: Path, *commands: str) -> None:
    """No containerd of the run, no process running ``commands`` (soci and what it started), no files. A
    process SIGKILLed just before the CLI returned may take a moment to go: allow it 3 seconds."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (
        our_containerd_processes(work) or any(processes_with(c) for c in commands)
    ):
        time.sleep(0.05)
    assert managed_daemon_pids(work) == [] and our_containerd_processes(work) == [], processes_with(str(work))
    for command in commands:
        assert processes_with(command) == [], command
    assert not work.exists() or list(work.iterdir()) == []


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


# -- containerd killed -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "during",
    [
        "pull",
        "create",
    ],
)
def test_containerd_killed(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    during: str,
    request: pytest.FixtureRequest,
) -> None:
    """SIGKILL to the managed containerd mid-pull (a throttled download) or while soci create runs: one line
    that says containerd died, its log's end below, exit 6; soci stopped, nothing left."""
    image = image_of(tmp_path, seed_for(request), LAYER_SIZE)
    ref = push(registry, client, "faults/killed", image)
    work = tmp_path / "work"
    shim = faulty_soci(tmp_path, soci_bin, create="hang")
    big = image.layers[0]

    def layer_bytes() -> int:
        return sum(r.body_bytes for r in proxy.requests if r.method == "GET" and big.digest in r.path)

    def creating() -> bool:
        return any("create" in argv for _, argv in processes_with(shim))

    with HttpProxy(registry.host) as proxy:
        if during == "pull":
            proxy.throttle(re.escape(big.digest), LAYER_RATE, method="GET")
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        args = ["index", str(via), "--soci-bin", shim, "--min-layer-size", "1MiB", "--work-dir", str(work)]
        with cli_process(tmp_path, *args) as proc:
            if during == "pull":
                wait_until(lambda: layer_bytes() > 0, proc, "layer bytes flowed", tmp_path)
            else:
                wait_until(creating, proc, "soci create ran", tmp_path)
            pids = managed_daemon_pids(work)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            took = stopped_after(proc, time.monotonic())
            if during == "pull":
                assert layer_bytes() < big.size  # it landed mid-pull
    _, err = output_of(tmp_path)
    print(f"exit {proc.returncode} {took:.2f} s after the kill:\n{err}")
    assert proc.returncode == ExitCode.CONTAINERD, err
    lines = err.strip().splitlines()
    errors = error_lines(err)
    assert errors == [f"{ERROR_PREFIX} containerd (pid {pids[0]}) exited unexpectedly (signal 9, SIGKILL)"], (
        err
    )
    below = lines[lines.index(errors[0]) + 1 :]
    assert below and all(line.startswith("  | ") for line in below), err  # the end of containerd's log
    assert any("containerd" in line for line in below)
    assert "Traceback" not in err
    assert took < KILLED_STOP_WITHIN, took
    assert_nothing_left(work, shim)
    assert client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1) == []


def test_the_daemon_manager_reports_its_daemon_dying(tmp_path: Path, any_containerd_bin: str) -> None:
    """ManagedContainerd on its own, with each containerd release: killed while in use, it stops the programs
    started against it at once (as soci is: its socket on their command line), every call says it died, and a
    block that failed for it fails with that error; a daemon stopped on purpose is no such case."""
    daemon = ManagedContainerd(tmp_path / "containerd", binary=any_containerd_bin)
    with pytest.raises(DaemonExitedError) as raised, daemon, ContainerdClient(daemon.address, "faults") as cd:
        assert cd.version.get().version
        # A program started against it by the process supervisor (as soci is: its socket on its command line)
        user = supervisor().start(
            ["bash", "-c", "sleep 300 & wait", "soci", "--address", daemon.address], name="user"
        )
        try:
            pid = daemon.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert user.wait(timeout=5) == -signal.SIGKILL  # stopped by the watchdog, with what it started
            assert processes(group=user.pid) == []
        finally:
            user.kill()
        with pytest.raises(DaemonExitedError) as call:
            cd.version.get()
        assert call.value.message == f"containerd (pid {pid}) exited unexpectedly (signal 9, SIGKILL)"
        assert call.value.exit_code == ExitCode.CONTAINERD and call.value.detail
        raise RuntimeError("what the block was doing when it noticed")
    assert raised.value.message == call.value.message
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert not (tmp_path / "containerd").exists()
    assert daemon_exit_error(daemon.address) is None

    stopped = ManagedContainerd(tmp_path / "again", binary=any_containerd_bin)
    with stopped:
        address = stopped.address
    assert daemon_exit_error(address) is None  # stopped on purpose: nothing to report


# -- signals during V2 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "during",
    [
        "convert",
        "push",
    ],
)
def test_signal_during_v2(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    during: str,
    sig: signal.Signals,
    request: pytest.FixtureRequest,
) -> None:
    """Ctrl-C or SIGTERM while soci convert runs, or while the V2 push uploads (the upload held back by the
    proxy): exit 130 within 5 s, soci and containerd stopped, the work directory gone, the output tag not
    pushed and no manifest in the registry that refers to something missing."""
    image = image_of(tmp_path, seed_for(request))
    ref = push(registry, client, "faults/v2signal", image)
    work = tmp_path / "work"
    soci = faulty_soci(tmp_path, soci_bin, convert="hang") if during == "convert" else soci_bin

    def converting() -> bool:
        return any("convert" in argv for _, argv in processes_with(soci))

    def uploading() -> bool:  # an upload's body has begun to reach the registry, at the throttled rate
        return any(r.request_bytes > 0 and r.throttled for r in proxy.requests)

    with HttpProxy(registry.host) as proxy:
        # Uploads (the zTOC: ~30 KiB) crawl at 1 KiB/s: the push is certainly under way when the signal comes.
        proxy.throttle(r"/blobs/uploads/", 1024, request=True)
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        args = [
            "index", str(via), "--soci-bin", soci, "--min-layer-size", "1MiB", "--work-dir", str(work),
            "--soci-version", "V2", "--output-tag", "app-soci",
        ]  # fmt: skip
        with cli_process(tmp_path, *args) as proc:
            if during == "convert":
                wait_until(converting, proc, "soci convert ran", tmp_path)
            else:
                wait_until(uploading, proc, "an upload was under way", tmp_path)
            proc.send_signal(sig)
            took = stopped_after(proc, time.monotonic(), limit=STOP_WITHIN + 1)
    _, err = output_of(tmp_path)
    print(f"exit {proc.returncode} {took:.2f} s after {sig.name}")
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert took < STOP_WITHIN, took
    assert err.strip().splitlines()[-1] == f"{ERROR_PREFIX} interrupted", err
    assert "Traceback" not in err
    assert_nothing_left(work, soci if during == "convert" else str(work))
    assert client.head_manifest(ref, "app-soci") is None
    assert client.list_tags(ref) == ["v1"]
    assert dangling_references(registry, client, ref) == []


# -- two runs at once ------------------------------------------------------------------------------------
def run_two(tmp_path: Path, first: list[str], second: list[str]) -> list[dict[str, Any]]:
    """Two soci-wrapper runs started together; both must succeed. Their reports."""
    with (
        cli_process(tmp_path, *first, name="first") as one,
        cli_process(tmp_path, *second, name="second") as two,
    ):
        for proc in (one, two):
            proc.wait(timeout=120)
    reports = []
    for name, proc in (("first", one), ("second", two)):
        out, err = output_of(tmp_path, name)
        assert proc.returncode == 0, f"{name}: {err}"
        reports.append(json.loads(out))
    return reports


def check_index_of(client: RegistryClient, ref: Reference, image: Image, report: dict[str, Any]) -> None:
    """``report``'s SOCI index is in the registry for ``image`` (among the referrers: two runs on one image may
    each push one) and covers its big layer."""
    assert report["status"] in ("indexed", "already-indexed"), report
    digest = report["indexes"][0]["soci_index_digest"]
    referrers = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    assert digest in [d.digest for d in referrers]
    doc = client.get_manifest(ref, digest).json()
    assert doc["subject"]["digest"] == image.digest
    assert [x["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for x in doc["layers"]] == [image.layers[0].digest]
    for blob in [doc["config"], *doc["layers"]]:
        assert client.blob_exists(ref, blob["digest"])


@pytest.mark.parametrize("images", ["same-image", "different-images"])
def test_two_runs_each_with_its_own_daemon(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    images: str,
    request: pytest.FixtureRequest,
) -> None:
    """Two runs at once in one --work-dir, each starting its own containerd: both index correctly."""
    seed = seed_for(request)
    built = [image_of(tmp_path, seed)]
    built.append(built[0] if images == "same-image" else image_of(tmp_path, seed + 10))
    refs = [push(registry, client, "faults/two-daemons", image) for image in built]
    work = tmp_path / "work"
    common = ["--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work), "--json"]
    reports = run_two(tmp_path, ["index", str(refs[0]), *common], ["index", str(refs[1]), *common])
    for ref, image, report in zip(refs, built, reports, strict=True):
        check_index_of(client, ref, image, report)
    if images == "different-images":
        assert [r["status"] for r in reports] == ["indexed", "indexed"]
        for ref, image, report in zip(refs, built, reports, strict=True):
            check_v1_index(client, ref, image, report)
    assert_nothing_left(work)


@pytest.mark.parametrize("images", ["same-image", "different-images"])
@pytest.mark.parametrize("namespaces", ["one-namespace", "two-namespaces"])
def test_two_runs_attached_to_one_daemon(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    images: str,
    namespaces: str,
    request: pytest.FixtureRequest,
) -> None:
    """Two runs at once attached (--containerd-address) to one containerd, in one namespace or two: both
    index correctly, each namespace holds its image, and the daemon is left running."""
    seed = seed_for(request)
    built = [image_of(tmp_path, seed)]
    built.append(built[0] if images == "same-image" else image_of(tmp_path, seed + 10))
    refs = [push(registry, client, "faults/attached", image) for image in built]
    names = ["wrapper-a", "wrapper-a" if namespaces == "one-namespace" else "wrapper-b"]
    work = tmp_path / "work"
    with ManagedContainerd(tmp_path / "containerd") as daemon:
        pid = daemon.pid
        common = ["--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work), "--json"]
        common += ["--containerd-address", daemon.address]
        reports = run_two(
            tmp_path,
            ["index", str(refs[0]), *common, "--namespace", names[0]],
            ["index", str(refs[1]), *common, "--namespace", names[1]],
        )
        assert daemon.pid == pid  # never stopped
        for ref, name, report in zip(refs, names, reports, strict=True):
            if report["status"] != "indexed":
                continue  # found the other run's index: pulled nothing
            with ContainerdClient(daemon.address, name) as cd:
                assert cd.images.get(str(ref)).target.digest == ref.digest
    for ref, image, report in zip(refs, built, reports, strict=True):
        check_index_of(client, ref, image, report)
    assert not work.exists() or list(work.iterdir()) == []


# -- a full disk -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "layer_size", "code"),
    [
        ("containerd", 8 * MIB, ExitCode.CONTAINERD),  # the layer does not fit in containerd's content store
        ("soci", 3 * MIB, ExitCode.SOCI),  # it fits, but not soci's copy of it beside it
    ],
)
def test_full_disk_in_the_work_dir(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    where: str,
    layer_size: int,
    code: int,
    request: pytest.FixtureRequest,
) -> None:
    """--work-dir on a 5 MiB file system (a tmpfs in a private mount namespace): one line naming the directory
    (and, for containerd's store, the blob's size), a documented exit code, nothing left there."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        unavailable("needs root and unshare(1) to mount a private tmpfs")
    image = image_of(tmp_path, seed_for(request), layer_size)
    ref = push(registry, client, "faults/full", image)
    disk = tmp_path / "disk"
    disk.mkdir()
    results = tmp_path / "results"
    results.mkdir()
    cli = [sys.executable, "-m", "wrapper.cli.main", "index", str(ref), "--soci-bin", soci_bin]
    cli += ["--min-layer-size", "1MiB", "--work-dir", str(disk)]
    q = shlex.quote
    script = "\n".join(
        [
            "set -u",
            f"mount -t tmpfs -o size=5m tmpfs {q(str(disk))} || exit 99",
            f"{shlex.join(cli)} 2>{q(str(results / 'stderr'))}",
            f"echo $? >{q(str(results / 'rc'))}",
            f"ls -A {q(str(disk))} >{q(str(results / 'left'))}",
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    err = (results / "stderr").read_text()
    print(err)
    assert int((results / "rc").read_text()) == code, err
    errors = error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(disk) in errors[0] and "no space left" in errors[0], errors[0]
    if where == "containerd":
        assert "a blob of 8.0 MiB does not fit" in errors[0], errors[0]
    assert (results / "left").read_text() == ""  # the run removed its directory from the full disk
    assert managed_daemon_pids(disk) == []
    assert list(disk.iterdir()) == []  # and wrote nothing under the mount point itself
    assert client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1) == []

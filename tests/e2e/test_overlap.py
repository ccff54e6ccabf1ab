"""Layers indexed while the pull goes on (wrapper.soci.prebuild), with the real soci and a real registry and containerd.

* the index is the one a sequential run (``--no-overlap``) makes, for V1 and V2, one platform and two;
* early builds that fail are left to the run's own soci call: the run still succeeds;
* a run stopped while an early soci runs leaves no soci, no image record and no files behind;
* the largest layer downloads first, on its own (the others at once when one stream is slow);
* ``--overlap auto`` builds early when the pull is slow, and declines when it is fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_reuse import index, layers, ztoc_list
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, ROOT, processes, push, seed_for
from tests.imagefactory import AMD64, ARM64, Image, LayerSpec, build_image, index_of
from tests.proxy import HttpProxy
from wrapper.containerd.client import ContainerdClient
from wrapper.core.models import Platform
from wrapper.core.options import PullOptions
from wrapper.core.progress import QuietReporter
from wrapper.core.reference import Reference
from wrapper.image.pull import pull
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.prebuild import IMAGE_PREFIX

THRESHOLD = "1MiB"
# The images here are small: over loopback, how fast their pull seems is noise, and --overlap auto could go
# either way. The tests of the early builds ask for them; auto has tests of its own.
ALWAYS = ("--overlap", "always")


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def app(tmp_path: Path, seed: int, platform: Platform = AMD64) -> Image:
    """Three large layers of different sizes and a small one."""
    specs = [
        LayerSpec(2 * MIB, seed=seed),
        LayerSpec(64 * 1024, seed=seed + 1),
        LayerSpec(4 * MIB, seed=seed + 2),
        LayerSpec(3 * MIB, seed=seed + 3),
    ]
    return build_image(tmp_path / f"app-{seed}", specs, platform=platform)


def large(report: dict[str, object], platform: str = "linux/amd64") -> list[dict[str, object]]:
    return [x for x in layers(report, platform).values() if int(str(x["size"])) >= MIB]


@pytest.mark.soci
def test_v1_index_made_during_the_pull_is_the_sequential_one(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    ref = push(registry, client, "overlap/v1", app(tmp_path, seed_for(request)))
    early = index(soci_bin, ref, tmp_path / "w", *ALWAYS)
    assert [(x["status"], x["during_pull"]) for x in large(early)] == [("built", True)] * 3

    sequential = index(soci_bin, ref, tmp_path / "w", "--force", "--no-reuse", "--no-overlap")
    assert [(x["status"], x["during_pull"]) for x in large(sequential)] == [("built", False)] * 3
    assert ztoc_list(client, ref, early) == ztoc_list(client, ref, sequential)
    assert early["indexes"][0]["soci_index_digest"] == sequential["indexes"][0]["soci_index_digest"]


@pytest.mark.soci
def test_v2_on_two_platforms_during_the_pull_is_the_sequential_one(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    image = index_of([app(tmp_path, seed, AMD64), app(tmp_path, seed + 10, ARM64)])
    ref = push(registry, client, "overlap/v2", image)
    v2 = ("--soci-version", "V2", "--all-platforms")
    early = index(soci_bin, ref, tmp_path / "w", *v2, *ALWAYS, "--output-tag", "early-soci")
    sequential = index(
        soci_bin,
        ref,
        tmp_path / "w",
        *v2,
        "--output-tag",
        "seq-soci",
        "--force",
        "--no-reuse",
        "--overlap",
        "never",
    )
    for platform in ("linux/amd64", "linux/arm64/v8"):
        assert {x["during_pull"] for x in large(early, platform)} == {True}
        assert {x["during_pull"] for x in large(sequential, platform)} == {False}
        assert ztoc_list(client, ref, early, platform) == ztoc_list(client, ref, sequential, platform)


def soci_shim(directory: Path, real_soci: str, action: str) -> str:
    """The real soci, except for ``soci create`` of soci-wrapper's one-layer images (the early builds), which
    ``fail``s (exit 1) or ``hang``s (with a child process of its own)."""
    what = {"fail": 'echo "soci: injected failure" >&2; exit 1', "hang": "sleep 300 & wait"}[action]
    script = directory / f"soci-early-{action}"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'for arg in "$@"; do\n'
        f'  case "$arg" in {IMAGE_PREFIX}*) {what} ;; esac\n'
        "done\n"
        f'exec {real_soci} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.soci
def test_failed_early_builds_are_left_to_the_run(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    ref = push(registry, client, "overlap/fail", app(tmp_path, seed_for(request)))
    shim = soci_shim(tmp_path, soci_bin, "fail")
    report = index(shim, ref, tmp_path / "w", *ALWAYS)
    assert [(x["status"], x["during_pull"]) for x in large(report)] == [("built", False)] * 3
    assert report["indexes"][0]["ztocs"] == 3


@pytest.mark.soci
def test_attached_containerd_keeps_no_one_layer_images(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    containerd_client: ContainerdClient,
    request,
) -> None:
    ref = push(registry, client, "overlap/attached", app(tmp_path, seed_for(request)))
    attach = ("--containerd-address", containerd_client.address, "--namespace", containerd_client.namespace)
    report = index(soci_bin, ref, tmp_path / "w", *attach, *ALWAYS)
    assert {x["during_pull"] for x in large(report)} == {True}
    names = [image.name for image in containerd_client.images.list()]
    assert names == [str(ref)]
    assert not [n for n in names if n.startswith(IMAGE_PREFIX)]
    assert containerd_client.leases.list() == []


def _processes_in_group(pgid: int) -> list[str]:
    """The live processes of process group ``pgid`` (zombies waiting for init to reap them are not)."""
    return [f"{p.pid} {p.state} {p.argv!r}" for p in processes(group=pgid)]


def _early_soci(work: Path) -> int | None:
    """The pid of an early build's soci (the shim: its command line names a one-layer image and the work
    dir)."""
    return next((p.pid for p in processes(work) if IMAGE_PREFIX in p.cmdline), None)


@pytest.mark.soci
def test_sigterm_while_an_early_build_runs_stops_it(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    ref = push(registry, client, "overlap/stop", app(tmp_path, seed_for(request)))
    shim = soci_shim(tmp_path, soci_bin, "hang")
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    argv = [sys.executable, "-m", "wrapper.cli.main", "index", str(ref), "--soci-bin", shim]
    argv += ["--min-layer-size", THRESHOLD, "--work-dir", str(work), *ALWAYS]
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while (early := _early_soci(work)) is None:
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}):\n{err_path.read_text()}"
            assert time.monotonic() < deadline, f"no early soci create started:\n{err_path.read_text()}"
            time.sleep(0.02)
        group = os.getpgid(early)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        text = err_path.read_text()
        assert proc.returncode == 130, text
        assert "Traceback" not in text, text
        assert _processes_in_group(group) == []  # the hanging soci and its child are gone
        assert list(work.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# -- the order of the downloads ------------------------------------------------------------------------------
class Transfers(QuietReporter):
    """Records when each blob's transfer started and finished."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    def blob_started(self, digest: str, label: str, total: int, offset: int = 0) -> None:
        with self.lock:
            self.started.setdefault(digest, time.monotonic())

    def blob_finished(self, digest: str, note: str = "") -> None:
        with self.lock:
            self.finished[digest] = time.monotonic()


def _pull_largest_first(registry_host: str, ref: Reference, address: str, namespace: str) -> Transfers:
    transfers = Transfers()
    options = PullOptions(min_layer_size=MIB, largest_layer_first=True)
    with (
        RegistryClient(CredentialStore(use_ecr=False), plain_http=True) as registry,
        ContainerdClient(address, namespace) as containerd,
    ):
        via = Reference(registry_host, ref.repository, digest=ref.digest)
        pull(registry, containerd, via, options, transfers)
    return transfers


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
def test_the_largest_layer_downloads_first_on_its_own_unless_slow(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    containerd_client: ContainerdClient,
    slow: bool,
    request,
) -> None:
    image = app(tmp_path, seed_for(request))
    ref = push(registry, client, f"overlap/order-{'slow' if slow else 'fast'}", image)
    largest, *others = sorted((x for x in image.layers if x.size >= MIB), key=lambda x: -x.size)
    with HttpProxy(registry.host) as proxy:
        if slow:  # 2 s for the largest layer: far under 64 MiB/s, and time for the probe (0.5 s of data, read
            # in chunks) to open the other lanes while it still downloads, on a busy machine too
            proxy.throttle(r"/blobs/sha256:", 2 * MIB, method="GET")
        seen = _pull_largest_first(proxy.host, ref, containerd_client.address, containerd_client.namespace)
    if not slow:  # the others start once the largest is in
        assert all(seen.started[x.digest] >= seen.finished[largest.digest] for x in others)
    else:  # the others did not wait for the largest: they started while it still downloaded
        assert all(seen.started[x.digest] < seen.finished[largest.digest] for x in others)
    assert all(seen.started[largest.digest] <= seen.started[x.digest] for x in others)


@pytest.mark.soci
def test_auto_builds_early_when_the_pull_is_slow(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    ref = push(registry, client, "overlap/auto", app(tmp_path, seed_for(request)))
    with HttpProxy(registry.host) as proxy:
        proxy.throttle(r"/blobs/sha256:", 4 * MIB, method="GET")  # ~12 MiB/s in all: far under 64 per CPU
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        report = index(soci_bin, via, tmp_path / "w")
    assert [(x["status"], x["during_pull"]) for x in large(report)] == [("built", True)] * 3

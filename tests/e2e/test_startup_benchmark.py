"""The start-up benchmark cannot rot: its image builders make runnable images of this machine's files, its slow
registry holds back and paces every response, and one round of it runs end to end on tiny images.

No timing is asserted (speed belongs in benchmarks/README.md): only that every piece does what the benchmark
relies on. The large layer is a small tree made here instead of the Go toolchain.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.host_image import HostLayerPlan, HostTree, build_host_layer, layer_key
from benchmarks.slow_registry import LinkSettings, check_link, slow_registry
from benchmarks.startup_images import MODULES, SDK_TARGET, ShapeImage, build_shape_images
from tests.fixtures.deps import unavailable
from tests.fixtures.registry import start_registry
from tests.fixtures.snapshotter import snapshotter_program
from tests.helpers import ROOT
from tests.imagefactory import push_image
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient


def _needs_root_and_python() -> None:
    if os.geteuid() != 0:
        unavailable("the start-up benchmark runs containers (and these tests chroot): it needs root")
    if not Path("/usr/bin/python3.11").is_file() or shutil.which("ldd") is None:
        unavailable("Debian's python3.11 (/usr/bin/python3.11) and ldd are needed for the benchmark's images")


@pytest.fixture(scope="module")
def tiny_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small stand-in for the Go toolchain: nested directories, files of a few sizes, a symbolic link."""
    sdk = tmp_path_factory.mktemp("sdk") / "tinysdk"
    for i in range(12):
        path = sdk / f"pkg{i % 3}" / f"mod{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1000 * (i + 1)) + b"text\n" * (200 * i))
    (sdk / "bin").mkdir()
    (sdk / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (sdk / "bin" / "tool").chmod(0o755)
    (sdk / "bin" / "tool-link").symlink_to("tool")
    return sdk


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, tiny_sdk: Path) -> dict[str, ShapeImage]:
    _needs_root_and_python()
    return build_shape_images(tmp_path_factory.mktemp("layers"), sdk=tiny_sdk)


def _chroot() -> str:
    found = shutil.which("chroot")
    if found is None:
        unavailable("chroot (coreutils) is not on PATH")
    return found


def _unpack(image: ShapeImage, root: Path) -> None:
    root.mkdir()
    for layer in image.layers:
        assert layer.layer.path is not None
        subprocess.run(["tar", "-xzf", str(layer.layer.path), "-C", str(root)], check=True)


def test_the_images_run_their_workloads(
    images: dict[str, ShapeImage], tiny_sdk: Path, tmp_path: Path
) -> None:
    """Unpacked and run with chroot, each image's python3 runs its workload: the imports, and reading every file
    of the large layer (as many as the tree has)."""
    imports = images["unread-sdk"]
    assert [x.plan_name for x in imports.layers] == [
        "python-base",
        "python-stdlib",
        "sdk-tinysdk",
        "app-imports",
    ]
    config = json.loads(imports.image.config.read_bytes())["config"]
    assert config["Entrypoint"] == ["/usr/bin/python3"] and config["Cmd"] == ["/app/main.py"]
    _unpack(imports, tmp_path / "imports")
    assert os.readlink(tmp_path / "imports" / "lib") == "usr/lib"
    done = subprocess.run(
        [_chroot(), str(tmp_path / "imports"), *config["Entrypoint"], *config["Cmd"]],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin", "LANG": "C.UTF-8"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"imported {len(MODULES)} modules"), done.stdout

    reads = images["reads-all"]
    config = json.loads(reads.image.config.read_bytes())["config"]
    assert config["Cmd"] == ["/app/readall.py", SDK_TARGET]
    _unpack(reads, tmp_path / "reads")
    done = subprocess.run(
        [_chroot(), str(tmp_path / "reads"), *config["Entrypoint"], *config["Cmd"]],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    files = [p for p in tiny_sdk.rglob("*") if p.is_file() and not p.is_symlink()]
    assert done.stdout.startswith(f"read {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")
    assert os.readlink(tmp_path / "reads" / SDK_TARGET.strip("/") / "bin" / "tool-link") == "tool"


def test_built_layers_are_reused_and_a_changed_file_is_a_new_layer(tiny_sdk: Path, tmp_path: Path) -> None:
    _needs_root_and_python()
    plan = HostLayerPlan("sdk", (HostTree(tiny_sdk, "/opt/sdk"),))
    first = build_host_layer(tmp_path, plan)
    assert first.layer.path is not None
    built_at = first.layer.path.stat().st_mtime_ns
    again = build_host_layer(tmp_path, plan)
    assert again.layer.digest == first.layer.digest and again.layer.path == first.layer.path
    assert first.layer.path.stat().st_mtime_ns == built_at, "rebuilt instead of reused"
    key = layer_key(plan)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_sdk, changed, symlinks=True)
    (changed / "pkg0" / "mod0.txt").write_bytes(b"other content")
    assert layer_key(HostLayerPlan("sdk", (HostTree(changed, "/opt/sdk"),))) != key


def test_the_slow_registry_holds_back_and_paces_every_response(
    images: dict[str, ShapeImage], tmp_path: Path
) -> None:
    image = images["unread-sdk"]
    registry = start_registry(tmp_path / "registry")
    try:
        ref = Reference(registry.host, "bench/unread-sdk", tag="v1")
        with RegistryClient(CredentialStore(use_ecr=False)) as client:
            push_image(client, ref, image.image)
        layer = image.layers[2].layer  # the tiny SDK
        with slow_registry(registry.host, LinkSettings(latency=0.02, rate=50e6)) as proxy:
            check = check_link(
                proxy.host, registry.host, f"/v2/bench/unread-sdk/blobs/{layer.digest}", requests=3
            )
            # The client has every byte a moment before the relay thread counts the last chunk it sent.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(
                f.bytes != layer.size for f in proxy.fetch_log() if f.blob
            ):
                time.sleep(0.02)
            recorded = proxy.requests
            log = proxy.fetch_log()
    finally:
        registry.stop()
    assert check.blob_bytes == layer.size and len(check.two_streams_mbps) == 2
    assert recorded and all(r.delayed for r in recorded), "a request was not held back"
    blobs = [r for r in recorded if "/blobs/" in r.path]
    assert len(blobs) == 3 and all(r.throttled and r.body_bytes == layer.size for r in blobs)
    assert all(f.end >= f.start for f in log)
    assert [f.bytes for f in log if f.blob] == [layer.size] * 3


def test_one_round_of_the_benchmark(
    tiny_sdk: Path,
    soci_bin: str,
    containerd2_bin: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Set-up (index, record, index with the list), then one start of each variant through the slow registry;
    the report has every row, a lazy start mounted layers lazily, the prefetch index has its artifacts, and the
    benchmark leaves nothing in its work directory."""
    _needs_root_and_python()
    snapshotter = snapshotter_program()
    work = tmp_path / "work"
    work.mkdir()
    argv = [
        sys.executable, "-m", "benchmarks.startup_benchmark", "--repeat", "1", "--shapes", "unread-sdk",
        "--sdk-dir", str(tiny_sdk), "--cache-dir", str(tmp_path_factory.mktemp("bench-layers")),
        "--work-dir", str(work), "--containerd-bin", containerd2_bin, "--snapshotter-bin", snapshotter, "--json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    env["SOCI_BIN"] = soci_bin
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=280, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a target missed (tiny images, no timing here)
    report = json.loads(done.stdout)
    assert report["errors"] == [], report["errors"]
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"full", "lazy", "lazy-prefetch"} and all(r["runs"] == 1 for r in rows.values())
    assert rows["full"]["layers"] == {"unpacked": 4}
    assert rows["lazy"]["layers"].get("lazy", 0) >= 1 and rows["lazy-prefetch"]["layers"].get("lazy", 0) >= 1
    made = report["setup"]["index"]["unread-sdk"]
    assert made["lazy"]["prefetch_artifacts"] == [] and made["lazy-prefetch"]["prefetch_artifacts"]
    assert report["setup"]["recorded"]["unread-sdk"]["files"] > len(MODULES)
    prefetched = [r for r in report["runs"] if r["variant"] == "lazy-prefetch"]
    assert prefetched[0]["detail"]["snapshotter"]["prefetch_artifacts"], "the snapshotter loaded no prefetch"
    assert rows["lazy"]["phases"]["pull"]["requests"].get("soci", 0) >= 1, "no SOCI index or zTOC fetched"
    assert report["link"]["settings"] == "20 ms per request, 50 MB/s per stream"
    assert [v["what"] for v in report["verdicts"]] == [
        "unread-sdk: lazy / full",
        "unread-sdk: lazy-prefetch / lazy",
    ]
    assert list(work.iterdir()) == [], "the benchmark left files behind"

"""What both benchmarks share: a test image on disk, a loopback registry holding it, private containerds,
and running soci-wrapper / ctr as timed subprocesses.

Everything started here is stopped, and every temporary directory removed, when the context managers exit.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer, start_registry
from tests.imagefactory import Image, LayerSpec, build_image, build_layer, push_image
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd, containerd_binary_version, find_containerd
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

MiB = 1024 * 1024
MB = 1_000_000
REPO_ROOT = Path(__file__).resolve().parent.parent

# tests/fixtures/registry.py reports startup failures with pytest.fail, which raises this (a BaseException).
SetupFailed: type[BaseException] = pytest.fail.Exception


class BenchmarkError(Exception):
    """A step of a benchmark failed; the message says which and why."""


def log(message: str) -> None:
    """Progress for the person running the benchmark (stderr, so --json output stays clean)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the image ---------------------------------------------------------------------------------------------
def layer_sizes(total_mib: float, layers: int, small_mib: Sequence[float] = (1, 3, 6)) -> list[int]:
    """Byte sizes of ``layers`` layers adding up to ``total_mib``: a few small ones (below soci's 10 MiB
    minimum, taken from ``small_mib``) and large ones of decreasing size sharing the rest."""
    if layers < 1:
        raise BenchmarkError("--layers must be at least 1")
    total = int(total_mib * MiB)
    small = [int(s * MiB) for s in small_mib[: max(0, layers - 1)]]
    rest = total - sum(small)
    big_count = layers - len(small)
    if rest < big_count * 11 * MiB:
        raise BenchmarkError(
            f"--total-mib {total_mib:g} is too small for {big_count} layers of more than 10 MiB "
            f"plus {len(small)} small ones"
        )
    weights = list(range(big_count + 2, 2, -1))  # e.g. 7,6,5,4,3: mixed sizes, the largest first
    big = [rest * w // sum(weights) for w in weights]
    big[0] += rest - sum(big)
    # Interleave: big, small, big, small, ... so the manifest's layer order is mixed.
    out: list[int] = []
    for i in range(max(len(big), len(small))):
        if i < len(big):
            out.append(big[i])
        if i < len(small):
            out.append(small[i])
    return out


def build_test_image(directory: Path, sizes: Sequence[int], *, seed: int = 4242) -> Image:
    """Build (or reuse, if ``directory`` already holds them) the layers in parallel, then the image."""
    specs = [LayerSpec(size, seed=seed + i) for i, size in enumerate(sizes)]
    directory.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(len(specs), os.cpu_count() or 1))
    # spawn: the parent has grpc loaded, which does not like fork.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Largest first, so the slowest layers start early.
        ordered = sorted(specs, key=lambda s: -s.size_bytes)
        for future in [pool.submit(build_layer, directory, spec) for spec in ordered]:
            future.result()
    return build_image(directory, specs)  # finds every layer on disk now


@dataclass(frozen=True)
class Expected:
    """Which blobs a pull must leave in the content store."""

    required: frozenset[str]
    absent: frozenset[str] = frozenset()


@dataclass
class Setup:
    """A pushed image and the registry that serves it."""

    image: Image
    registry: RegistryServer
    reference: Reference

    @property
    def ref(self) -> str:
        return str(self.reference)

    @property
    def total_bytes(self) -> int:
        """Every blob of the image: layers, config and manifest."""
        return (
            sum(layer.size for layer in self.image.layers) + self.image.config.size + self.image.manifest.size
        )

    def sparse_bytes(self, min_layer_size: int) -> int:
        big = sum(layer.size for layer in self.image.layers if layer.size >= min_layer_size)
        return big + self.image.config.size + self.image.manifest.size

    def expected_full(self) -> Expected:
        digests = {layer.digest for layer in self.image.layers}
        return Expected(frozenset({*digests, self.image.config.digest, self.image.manifest.digest}))

    def expected_sparse(self, min_layer_size: int) -> Expected:
        big = {layer.digest for layer in self.image.layers if layer.size >= min_layer_size}
        small = {layer.digest for layer in self.image.layers if layer.size < min_layer_size}
        return Expected(
            frozenset({*big, self.image.config.digest, self.image.manifest.digest}), frozenset(small)
        )


@contextlib.contextmanager
def work_directory(parent: Path | None, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary directory for the whole benchmark; removed at the end unless ``keep``."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="soci-wrapper-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def image_in_registry(
    work: Path, sizes: Sequence[int], *, cache_dir: Path | None = None, repository: str = "bench/image"
) -> Iterator[Setup]:
    """Build the image, start docker-registry on loopback, push the image; stop the registry afterwards."""
    layers_dir = cache_dir or work / "layers"
    started = time.monotonic()
    log(f"building {len(sizes)} layers ({sum(sizes) / MiB:.0f} MiB) in {layers_dir}")
    image = build_test_image(layers_dir, sizes)
    log(f"built in {time.monotonic() - started:.1f} s; starting docker-registry")
    try:
        registry = start_registry(work / "registry")
    except SetupFailed as exc:
        raise BenchmarkError(f"docker-registry did not start: {exc}") from None
    try:
        reference = Reference(registry.host, repository, tag="v1")
        started = time.monotonic()
        with RegistryClient(CredentialStore(use_ecr=False)) as client:
            push_image(client, reference, image)
        log(f"pushed {reference} in {time.monotonic() - started:.1f} s")
        yield Setup(image, registry, reference)
    finally:
        registry.stop()


@contextlib.contextmanager
def fresh_containerd(work: Path, name: str) -> Iterator[ManagedContainerd]:
    """A private containerd with an empty content store; stopped and its directory removed afterwards."""
    if find_containerd() is None:
        raise BenchmarkError("containerd is not installed (run scripts/bootstrap.sh)")
    with ManagedContainerd(work / name) as daemon:
        yield daemon


def check_content(address: str, namespace: str, expected: Expected) -> None:
    """The pull left exactly what it should in the namespace's content store."""
    with ContainerdClient(address, namespace) as client:
        present = set(client.content.list_digests())
    missing = expected.required - present
    unwanted = expected.absent & present
    if missing:
        raise BenchmarkError(f"{len(missing)} blobs missing from the content store: {sorted(missing)[:3]}")
    if unwanted:
        raise BenchmarkError(f"{len(unwanted)} skipped blobs were stored anyway: {sorted(unwanted)[:3]}")


# -- running commands ---------------------------------------------------------------------------------------
def soci_wrapper_command(override: str | None = None) -> list[str]:
    """``override`` (split on spaces), else the console script next to this Python, else
    ``python -m wrapper.cli.main``."""
    if override:
        return override.split()
    script = Path(sys.executable).with_name("soci-wrapper")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "wrapper.cli.main"]


def ctr_binary() -> str:
    found = shutil.which("ctr")
    if found is None:
        raise BenchmarkError("ctr is not installed (it comes with Debian's containerd package)")
    return found


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def failure(self, what: str) -> BenchmarkError:
        tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-8:])
        return BenchmarkError(f"{what} exited with {self.returncode}:\n{tail}")


def run_timed(cmd: Sequence[str], *, timeout: float) -> Timed:
    """Run ``cmd`` to completion; wall-clock seconds from spawn to exit."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{cmd[0]} did not finish within {timeout:g} s") from None
    elapsed = time.perf_counter() - started
    return Timed(elapsed, proc.returncode, proc.stdout, proc.stderr)


# -- reporting ----------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    containerd = find_containerd()
    try:
        version = containerd_binary_version(containerd) if containerd else "not installed"
    except Exception as exc:
        version = f"unknown ({exc})"
    mem_total = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) // 1024} MiB"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "containerd": version,
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned and the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)

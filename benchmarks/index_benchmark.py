"""Indexing speed: the CodeBuild blueprint flow against ``soci-wrapper index``, side by side, in one run.

    sudo .venv/bin/python -m benchmarks.index_benchmark [--repeat 3] [--big-repeat 2] [--wrapper-commit REV] \\
        [--scenarios cold-app,cold-app-link,rebuild,rebuild-mid,two-platform,big,memory] [--cache-dir DIR] \\
        [--json]

Builds images with realistic content (benchmarks/realistic_image.py: thousands of files per layer, text
and random data, ~2.5x with gzip), pushes them once to Debian's docker-registry on loopback, and times,
alternating round by round (blueprint, soci-wrapper, ..., floor; blueprint, soci-wrapper, ...):

``blueprint``  the CodeBuild blueprint's stage 2: a fresh containerd (own root, state, socket; ready when
               ``ctr version`` answers), ``ctr images pull --plain-http``, ``soci create``, ``soci push
               --plain-http`` (soci's defaults: ``--content-store containerd``); timed from the daemon's
               spawn to the end of the push. Two platforms: ``ctr images pull --all-platforms``, then create
               and push per platform (with containerd's content store, soci v0.15.0 keeps only the last
               platform's index alive, so ``--all-platforms`` cannot push both).
``wrapper``    ``soci-wrapper index REF --json``: its own containerd, sparse pull, soci, push, cleanup.
``wrapper-no-overlap``: the same with ``--no-overlap`` (zTOCs built only after the whole pull), cold images.
``wrapper-reuse-from`` / ``wrapper-cache-dir``: the same on a rebuild, with ``--reuse-from`` the previous
               build, or with ``--cache-dir`` warmed by indexing the previous build.
``floor``      the least any tool must do: the layers soci reads already on local disk, ``ctr content
               ingest`` (all at once) into a fresh containerd with the manifest and config, an image
               record (containerd's Images API), ``soci create``, ``soci push`` (soci's own content store,
               as soci-wrapper uses).

``cold-app-link`` is ``cold-app`` with the registry behind an 800 Mbit/s link (a tbf qdisc on ``lo``, for
that scenario only; the floor reads local files and is not limited), as a registry across a network is.

Every measurement gets a repository of its own (a copy made by mounting the template's blobs: no data
moves), so every cold run finds no SOCI index, and every rebuild run finds exactly the previous build's.
Every containerd and soci root is new and empty. The registry's files are in the page cache for all;
the disk is synced (untimed) before each run. After each run (untimed) the registry is checked: a SOCI
index for each platform, with a zTOC for each layer of 10 MiB or more, the same zTOC digests for every
kind of run.

Peak memory of soci-wrapper (``memory``; and of every soci-wrapper run): the Python process alone
(``VmHWM``, sampled every 25 ms), the largest of its children, the process tree's largest total, and
``wait4``'s ``ru_maxrss`` (the largest of the process and its reaped children). CPU seconds of every
process a run starts (``RUSAGE_CHILDREN`` before and after) are reported next to wall time; on a shared
machine they vary far less. benchmarks/README.md has the figures and what they say.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO_ROOT,
    BenchmarkError,
    MiB,
    SetupFailed,
    ctr_binary,
    log,
    machine_info,
    median,
    render_table,
    soci_wrapper_command,
    work_directory,
)
from benchmarks._main import benchmark_main, verdict_lines
from benchmarks._procwatch import CommandTimeout, Watched, run_watched, unmount_under
from benchmarks._regclone import RepoCopier, soci_ztocs
from benchmarks.realistic_image import BuiltLayer, LayerPlan, build_layers, image_of
from tests.fixtures.registry import RegistryServer, start_registry
from tests.imagefactory import AMD64, ARM64, Image, ImageIndex, index_of, push_image
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import Image as ImageRecord
from wrapper.core.errors import WrapperError
from wrapper.core.models import Descriptor
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.binary import find_soci, soci_version

MIN_LAYER = 10 * MiB  # soci's and soci-wrapper's default --min-layer-size
SCENARIOS = ("cold-app", "cold-app-link", "rebuild", "rebuild-mid", "two-platform", "big", "memory")
# cold-app-link: the registry behind a link of this rate (a token bucket on the loopback interface, where the
# registry listens; containerd and soci talk over unix sockets and are not limited).
LINK_RATE = "800mbit"
# Targets, as ratios to the blueprint (or the floor) measured in the same run.
TARGETS = {
    ("cold-app", "wrapper"): 0.6,
    ("rebuild", "wrapper-reuse-from"): 0.25,
    ("rebuild", "wrapper-cache-dir"): 0.25,
    ("rebuild-mid", "wrapper-reuse-from"): 0.25,
    ("rebuild-mid", "wrapper-cache-dir"): 0.25,
}
FLOOR_TARGET = 1.10
RSS_TARGET_MIB = 150.0
FLAT_TOLERANCE = 0.10  # "flat": the 4 GiB image's peak within 10 % of the 0.5 GiB image's
CONTAINERD_DISABLED = ("io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt")


# -- images --------------------------------------------------------------------------------------------------
def _app_plans(prefix: str, seed: int, large_mib: Sequence[float]) -> list[LayerPlan]:
    """An "app": a base, dependencies and assets (three large layers), with two small layers after each
    (environment, users, entry points, configuration...)."""
    small_mib = (0.3, 0.5, 0.7, 0.6, 0.9, 1.0)
    names = ("base", "deps", "assets")
    plans: list[LayerPlan] = []
    for i, (name, size) in enumerate(zip(names, large_mib, strict=True)):
        plans.append(LayerPlan(f"{prefix}-{name}", seed + 10 * i, int(size * MiB)))
        for j in range(2):
            plans.append(
                LayerPlan(
                    f"{prefix}-small{2 * i + j}", seed + 10 * i + j + 1, int(small_mib[2 * i + j] * MiB)
                )
            )
    return plans


APP = _app_plans("app", 1000, (30, 120, 160))
TOP_V2 = LayerPlan("app-top-v2", 2000, 25 * MiB)
DEPS_V2 = LayerPlan("app-deps-v2", 2100, 120 * MiB)
MP_AMD64 = _app_plans("mp-amd64", 3000, (15, 60, 80))
MP_ARM64 = _app_plans("mp-arm64", 4000, (15, 60, 80))
BIG = [LayerPlan(f"big-{i}", 5000 + i, 512 * MiB) for i in range(4)]
MEM05 = [LayerPlan(f"mem05-{i}", 6000 + i, 128 * MiB) for i in range(4)]
MEM4 = [*BIG, *[LayerPlan(f"mem4-{i}", 7000 + i, 512 * MiB) for i in range(4)]]


def _rebuild_plans(changed_deps: bool) -> list[LayerPlan]:
    layers = [DEPS_V2 if (changed_deps and p.name == "app-deps") else p for p in APP]
    return [*layers, TOP_V2]


# Template images: name -> platforms' layer plans.
TEMPLATES: dict[str, list[list[LayerPlan]]] = {
    "app": [APP],
    "app-v2": [_rebuild_plans(False)],
    "app-v2mid": [_rebuild_plans(True)],
    "multi": [MP_AMD64, MP_ARM64],
    "big": [BIG],
    "mem05": [MEM05],
    "mem4": [MEM4],
}
SCENARIO_TEMPLATES = {
    "cold-app": ["app"],
    "cold-app-link": ["app"],
    "rebuild": ["app", "app-v2"],
    "rebuild-mid": ["app", "app-v2mid"],
    "two-platform": ["multi"],
    "big": ["big"],
    "memory": ["mem05", "mem4"],
}


@dataclass
class Template:
    """An image pushed once to ``tpl/<name>:v1``, with what the checks and the floor need."""

    name: str
    image: Image | ImageIndex
    blob_dir: Path  # manifest/config/index JSON files, for the floor's ingest
    files: int = 0  # files in all its layers
    layer_names: dict[int, str] = field(default_factory=dict)  # compressed size -> layer name

    @property
    def repository(self) -> str:
        return f"tpl/{self.name}"

    @property
    def images(self) -> tuple[Image, ...]:
        return self.image.images if isinstance(self.image, ImageIndex) else (self.image,)

    @property
    def top(self) -> Descriptor:
        return (
            self.image.index.descriptor
            if isinstance(self.image, ImageIndex)
            else self.image.manifest.descriptor
        )

    def large_layers(self) -> list[Descriptor]:
        return [layer.descriptor for img in self.images for layer in img.layers if layer.size >= MIN_LAYER]

    def compressed_bytes(self) -> int:
        return sum(layer.size for img in self.images for layer in img.layers)

    def floor_blobs(self) -> list[tuple[Descriptor, Path]]:
        """What soci reads, each with a file holding it: index, manifests, configs, large layers."""
        out: list[tuple[Descriptor, Path]] = []
        docs = [self.image.index] if isinstance(self.image, ImageIndex) else []
        for img in self.images:
            docs += [img.manifest, img.config]
        for blob in docs:
            path = self.blob_dir / blob.digest.removeprefix("sha256:")
            if not path.exists():
                path.write_bytes(blob.read_bytes())
            out.append((blob.descriptor, path))
        for img in self.images:
            for layer in img.layers:
                if layer.size >= MIN_LAYER:
                    assert layer.path is not None
                    out.append((layer.descriptor, layer.path))
        return out


def build_templates(names: Sequence[str], layer_dir: Path, blob_dir: Path) -> dict[str, Template]:
    plans = [plan for name in names for platform in TEMPLATES[name] for plan in platform]
    total = sum({p.key(): p.target for p in plans}.values())
    started = time.monotonic()
    log(f"building {len({p.key() for p in plans})} layers ({total / MiB:.0f} MiB compressed) in {layer_dir}")
    built = build_layers(layer_dir, plans)
    log(f"layers ready in {time.monotonic() - started:.1f} s")
    out: dict[str, Template] = {}
    for name in names:
        platforms = TEMPLATES[name]
        images = []
        for plans_of, platform in zip(platforms, (AMD64, ARM64), strict=False):
            layers: list[BuiltLayer] = [built[p.key()] for p in plans_of]
            images.append(image_of(layers, platform=platform))
        image: Image | ImageIndex = images[0] if len(images) == 1 else index_of(images)
        blob_dir.mkdir(parents=True, exist_ok=True)
        files = sum(built[p.key()].files for plans_of in platforms for p in plans_of)
        names_by_size = {built[p.key()].size: p.name for plans_of in platforms for p in plans_of}
        out[name] = Template(name, image, blob_dir, files, names_by_size)
    return out


def describe_template(template: Template) -> str:
    parts = []
    for img in template.images:
        sizes = ", ".join(f"{layer.size / MiB:.1f}" for layer in img.layers)
        parts.append(f"{img.platform}: [{sizes}]")
    total = template.compressed_bytes() / MiB
    return f"{template.name}: {total:.0f} MiB, {template.files} files; " + "; ".join(parts)


# -- results -------------------------------------------------------------------------------------------------
@dataclass
class Run:
    scenario: str
    kind: str
    round: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ztocs: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # scenario/image -> layer -> zTOC (first run)

    def of(self, scenario: str, kind: str) -> list[Run]:
        return [r for r in self.runs if r.scenario == scenario and r.kind == kind]

    def median(self, scenario: str, kind: str) -> float | None:
        runs = self.of(scenario, kind)
        return median([r.seconds for r in runs]) if runs else None


# -- the pieces each flow uses ----------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    registry: RegistryServer
    client: RegistryClient
    copier: RepoCopier
    soci: str
    ctr: str
    containerd: str
    templates: dict[str, Template]
    docker_config: Path
    wrapper_argv: list[str]
    wrapper_cwd: Path | None = None  # a snapshot's root (so that ``-m wrapper.cli.main`` finds it first)
    wrapper_pythonpath: str | None = None
    results: Results = field(default_factory=Results)
    counter: int = 0

    def run_dir(self, label: str) -> Path:
        self.counter += 1
        path = self.work / "runs" / f"{self.counter:03d}-{label}"
        path.mkdir(parents=True)
        return path

    def reference(self, repository: str, tag: str = "v1") -> Reference:
        return Reference(self.registry.host, repository, tag=tag)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every command: no soci-wrapper settings from the caller's shell, an empty
        docker config (the loopback registry is anonymous), the soci binary the blueprint uses."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
        env["DOCKER_CONFIG"] = str(self.docker_config)
        env["SOCI_BIN"] = self.soci  # the same soci for every flow
        env.update(extra)
        return env

    def run(
        self,
        argv: Sequence[str],
        what: str,
        *,
        tmp_globs: Sequence[str] = (),
        cwd: Path | None = None,
        **extra: str,
    ) -> Watched:
        try:
            watched = run_watched(
                argv, timeout=self.args.timeout, env=self.env(**extra), tmp_globs=tmp_globs, cwd=cwd
            )
        except CommandTimeout as exc:
            raise BenchmarkError(f"{what}: {exc}") from None
        if watched.returncode != 0:
            raise BenchmarkError(f"{what} exited with {watched.returncode}:\n{watched.tail()}")
        return watched

    def run_wrapper(self, argv: Sequence[str], what: str, *, tmp_globs: Sequence[str] = ()) -> Watched:
        """Run soci-wrapper (``argv`` starts with ``wrapper_argv``): from the snapshot, if there is one."""
        extra = {"PYTHONPATH": self.wrapper_pythonpath} if self.wrapper_pythonpath else {}
        return self.run(argv, what, tmp_globs=tmp_globs, cwd=self.wrapper_cwd, **extra)


@contextmanager
def own_containerd(bench: Bench, run_dir: Path, steps: dict[str, float], t0: float) -> Iterator[str]:
    """A containerd like a CodeBuild blueprint starts it (its stock plugins, but its own root, state and
    socket), ready when ``ctr version`` answers; steps["containerd"] is the time from ``t0``. Stopped
    (SIGTERM), unmounted and removed afterwards (untimed, in steps["stop (untimed)"])."""
    root, state, tmp = run_dir / "root", run_dir / "state", run_dir / "tmp"
    for path in (root, state, tmp):
        path.mkdir(exist_ok=True)
    sock = str(run_dir / "containerd.sock")
    disabled = ", ".join(json.dumps(p) for p in CONTAINERD_DISABLED)
    config = run_dir / "containerd.toml"
    config.write_text(
        f"version = 2\nroot = {json.dumps(str(root))}\nstate = {json.dumps(str(state))}\n"
        f"disabled_plugins = [{disabled}]\n[grpc]\n  address = {json.dumps(sock)}\n"
    )
    log_file = (run_dir / "containerd.log").open("wb")
    proc = subprocess.Popen(
        [bench.containerd, "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=bench.env(TMPDIR=str(tmp)),  # its temporary mounts while unpacking stay in the run directory
    )
    try:
        while True:  # ctr waits (up to 10 s) for the socket, then asks for the version
            if proc.poll() is not None:
                tail = (run_dir / "containerd.log").read_text(errors="replace").splitlines()[-5:]
                raise BenchmarkError("containerd exited at startup:\n" + "\n".join(tail))
            check = subprocess.run(
                [bench.ctr, "--address", sock, "version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if check.returncode == 0:
                break
            if time.perf_counter() - t0 > 30:
                raise BenchmarkError(f"containerd did not answer within 30 s: {check.stderr.decode()[-200:]}")
            time.sleep(0.01)
        steps["containerd"] = time.perf_counter() - t0
        yield sock
    finally:
        stop_started = time.perf_counter()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()
        unmount_under(run_dir)
        steps["stop (untimed)"] = time.perf_counter() - stop_started


def _soci_base(bench: Bench, sock: str, run_dir: Path, content_store: str | None = None) -> list[str]:
    argv = [bench.soci, "--address", sock, "--namespace", "default", "--root", str(run_dir / "soci-root")]
    if content_store:
        argv += ["--content-store", content_store]
    return argv


def _copies(watched: Watched, offset: float = 0.0) -> list[dict[str, float]]:
    """soci's temporary layer copies: seconds after ``offset`` when each appeared, stopped growing, went."""
    out = []
    for c in watched.copies:
        out.append(
            {
                "bytes": c.size,
                "appeared": round(c.appeared - offset, 3),
                "copied": round(c.grown - offset, 3),
                "gone": round((c.gone if c.gone is not None else watched.seconds) - offset, 3),
            }
        )
    return out


def run_blueprint(bench: Bench, scenario: str, template: Template, ref: Reference, run_dir: Path) -> Run:
    steps: dict[str, float] = {}
    detail: dict[str, Any] = {}
    multi = isinstance(template.image, ImageIndex)
    tmp = run_dir / "tmp"
    t0 = time.perf_counter()
    with own_containerd(bench, run_dir, steps, t0) as sock:
        ctr = [bench.ctr, "--address", sock, "--namespace", "default"]
        pull = [*ctr, "images", "pull", "--plain-http", *(["--all-platforms"] if multi else []), str(ref)]
        steps["pull+unpack"] = bench.run(pull, "ctr images pull").seconds
        soci = _soci_base(bench, sock, run_dir)
        platforms = [str(img.platform) for img in template.images] if multi else [None]
        steps["create"] = steps["push"] = 0.0
        for platform in platforms:
            choose = ["--platform", platform] if platform else []
            create = bench.run(
                [*soci, "create", *choose, str(ref)],
                "soci create",
                tmp_globs=[f"{tmp}/tmp.*"],
                TMPDIR=str(tmp),
            )
            # Copy times on one clock that runs only while soci create does (pushes in between left out).
            detail.setdefault("copies", []).extend(_copies(create, -steps["create"]))
            steps["create"] += create.seconds
            push = [*soci, "push", "--plain-http", *choose, str(ref)]
            steps["push"] += bench.run(push, "soci push", TMPDIR=str(tmp)).seconds
        seconds = time.perf_counter() - t0
    return Run(scenario, "blueprint", 0, seconds, steps, detail)


def _ingest(bench: Bench, ctr: Sequence[str], blobs: Sequence[tuple[Descriptor, Path]]) -> None:
    """``ctr content ingest`` of every blob at once, each from its file."""
    ingests: list[subprocess.Popen[bytes]] = []
    try:
        for desc, path in blobs:
            ref = f"floor-{desc.digest[7:19]}"
            argv = [
                *ctr,
                "content",
                "ingest",
                "--expected-size",
                str(desc.size),
                "--expected-digest",
                desc.digest,
                ref,
            ]
            with path.open("rb") as source:
                ingests.append(
                    subprocess.Popen(argv, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                )
        for proc in ingests:
            _, err = proc.communicate(timeout=bench.args.timeout)
            if proc.returncode != 0:
                raise BenchmarkError(
                    f"ctr content ingest exited with {proc.returncode}: {err.decode()[-300:]}"
                )
    finally:
        for proc in ingests:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_floor(bench: Bench, scenario: str, template: Template, ref: Reference, run_dir: Path) -> Run:
    steps: dict[str, float] = {}
    detail: dict[str, Any] = {}
    multi = isinstance(template.image, ImageIndex)
    tmp = run_dir / "tmp"
    blobs = template.floor_blobs()
    t0 = time.perf_counter()
    with own_containerd(bench, run_dir, steps, t0) as sock:
        started = time.perf_counter()
        ctr = [bench.ctr, "--address", sock, "--namespace", "default"]
        # Large layers first, all at once; then the small JSON documents, which nothing references until
        # the labels below: ingested first, containerd's start-up garbage collection could take them.
        large = [(d, p) for d, p in blobs if d.size >= MIN_LAYER]
        small = [(d, p) for d, p in blobs if d.size < MIN_LAYER]
        for batch in (large, small):
            _ingest(bench, ctr, batch)
        steps["ingest"] = time.perf_counter() - started
        started = time.perf_counter()
        with ContainerdClient(sock, "default") as client:
            # The garbage collector's references (what an image pull records), then the image record.
            for img in template.images:
                labels = {"containerd.io/gc.ref.content.config": img.config.digest}
                labels.update(
                    {
                        f"containerd.io/gc.ref.content.l.{i}": x.digest
                        for i, x in enumerate(img.layers)
                        if x.size >= MIN_LAYER
                    }
                )
                client.content.update_labels(img.manifest.digest, labels)
            if isinstance(template.image, ImageIndex):
                labels = {
                    f"containerd.io/gc.ref.content.m.{i}": m.digest for i, m in enumerate(template.images)
                }
                client.content.update_labels(template.image.digest, labels)
            client.images.create(ImageRecord(str(ref), template.top))
        steps["record"] = time.perf_counter() - started
        soci = _soci_base(bench, sock, run_dir, "soci")
        every = ["--all-platforms"] if multi else []
        create = bench.run(
            [*soci, "create", *every, str(ref)], "soci create", tmp_globs=[f"{tmp}/tmp.*"], TMPDIR=str(tmp)
        )
        steps["create"] = create.seconds
        detail["copies"] = _copies(create)
        steps["push"] = bench.run(
            [*soci, "push", "--plain-http", *every, str(ref)], "soci push", TMPDIR=str(tmp)
        ).seconds
        seconds = time.perf_counter() - t0
    return Run(scenario, "floor", 0, seconds, steps, detail)


def run_wrapper(
    bench: Bench, scenario: str, kind: str, ref: Reference, run_dir: Path, extra: Sequence[str] = ()
) -> Run:
    wrk = run_dir / "wrk"
    argv = [*bench.wrapper_argv, "index", str(ref), "--json", "--work-dir", str(wrk), *extra]
    watched = bench.run_wrapper(
        argv,
        "soci-wrapper index",
        tmp_globs=[f"{wrk}/soci-wrapper-*/tmp/tmp.*", f"{wrk}/soci-wrapper-*/image-*/tmp/tmp.*"],
    )
    try:
        report = json.loads(watched.stdout)
    except ValueError:
        raise BenchmarkError(f"soci-wrapper printed no JSON: {watched.stdout[-300:]!r}") from None
    if report.get("status") != "indexed":
        raise BenchmarkError(f"soci-wrapper says {report.get('status')!r}, not 'indexed' (not a cold run?)")
    stages = {k: float(v) for k, v in (report.get("stages") or {}).items()}
    first = watched.line_time("==> ") or 0.0
    steps = {"startup": first, **stages}
    steps["other"] = watched.seconds - first - sum(stages.values())
    statuses: dict[str, int] = {}
    for idx in report.get("indexes", []):
        for layer in idx.get("layers", []):
            statuses[layer.get("status", "?")] = statuses.get(layer.get("status", "?"), 0) + 1
    detail: dict[str, Any] = {
        "layers": statuses,
        "python_peak_mib": round(watched.self_hwm_kib / 1024, 1),
        "wait4_maxrss_mib": round(watched.maxrss_kib / 1024, 1),
        "tree_peak_mib": round(watched.tree_rss_peak_kib / 1024, 1),
        "children": [
            {
                "cmd": _short(p.cmdline),
                "start": round(p.start, 3),
                "last_seen": round(p.last_seen, 3),
                "peak_mib": round(p.hwm_kib / 1024, 1),
            }
            for p in watched.procs
            if not Path(p.cmdline.split(" ", 1)[0]).name.startswith("python")  # seen between fork and exec
        ],
        "copies": _copies(watched),
    }
    creates = watched.procs_matching("soci", " create ")
    pull_done = watched.line_time("==> index")
    last_layer = watched.line_time("done   layer", last=True)
    # When soci create started: /proc's start time (10 ms steps), else the index stage's first line (which
    # soci-wrapper prints a few milliseconds before it starts soci create).
    create_start = creates[0].start if creates else pull_done
    if create_start is not None:
        detail["create_start"] = round(create_start, 3)
        if pull_done is not None:
            detail["index_stage_to_create"] = round(create_start - pull_done, 3)
        if last_layer is not None:
            detail["last_download_to_create"] = round(create_start - last_layer, 3)
        detail["copies"] = _copies(watched, create_start)
        summaries = [t for t, line in watched.stderr_lines if re.search(r"soci create \S+: ", line)]
        if summaries:
            detail["create_seconds"] = round(max(summaries) - create_start, 3)
    push_end = watched.line_time("soci push: ", last=True)
    if push_end is not None:
        detail["after_push"] = round(watched.seconds - push_end, 3)
    detail["timeline"] = [
        (round(t, 3), line.rstrip()) for t, line in watched.stderr_lines if line.startswith("==>")
    ]
    return Run(scenario, kind, 0, watched.seconds, steps, detail)


def _short(cmdline: str) -> str:
    words = cmdline.split()
    if not words:
        return "?"
    name = Path(words[0]).name
    sub = next((w for w in words[1:] if w in ("create", "push", "rebuild-db", "index", "--version")), "")
    return f"{name} {sub}".strip()


# -- checks --------------------------------------------------------------------------------------------------
def check_registry(
    bench: Bench, scenario: str, template: Template, ref: Reference, run: Run, previous: Template | None
) -> None:
    """The run left a SOCI index for every platform, with a zTOC for each large layer, the same zTOCs as the
    scenario's first run; soci-wrapper built the zTOCs of new layers and reused (rebuilds) the others."""
    found: dict[str, str] = {}
    for img in template.images:
        ztocs = soci_ztocs(bench.client, ref, img.digest)
        if ztocs is None:
            raise BenchmarkError(f"{run.kind}: no SOCI index for {img.platform} in {ref.repository}")
        found.update(ztocs)
    large = {layer.digest for layer in template.large_layers()}
    if set(found) != large:
        raise BenchmarkError(f"{run.kind}: zTOCs for {len(found)} layers, expected {len(large)}")
    first = bench.results.ztocs.setdefault(f"{scenario}/{template.name}", found)
    if first != found:
        differ = sum(1 for k in found if first.get(k) != found[k])
        raise BenchmarkError(f"{run.kind}: {differ} zTOC digests differ from the scenario's first run")
    if run.kind.startswith("wrapper"):
        old = {layer.digest for layer in previous.large_layers()} if previous else set()
        expected = {"built": len(large - old), "reused": len(large & old)}
        got = {k: run.detail["layers"].get(k, 0) for k in expected}
        if got != expected:
            raise BenchmarkError(f"{run.kind}: soci-wrapper reports zTOCs {got}, expected {expected}")


# -- scenarios ----------------------------------------------------------------------------------------------


def _fresh_repo(bench: Bench, label: str, template: str, *, previous: str | None = None) -> Reference:
    """A new repository holding ``template`` as ``v1`` (cold), or holding ``previous`` (the previous
    build, indexed, as ``v1`` with its SOCI index) and ``template`` as ``v2`` (rebuild)."""
    repo = f"run/{bench.counter:03d}-{label}"
    if previous is None:
        bench.copier.copy(f"tpl/{template}", repo, {"v1": "v1"})
        return bench.reference(repo, "v1")
    bench.copier.copy(previous, repo)
    bench.copier.copy(f"tpl/{template}", repo, {"v1": "v2"})
    return bench.reference(repo, "v2")


def measure_once(
    bench: Bench,
    scenario: str,
    kind: str,
    round_no: int,
    measure: Callable[[Reference, Path], Run],
    ref_for: Callable[[str], Reference],
    template: Template,
    previous: Template | None = None,
) -> None:
    results = bench.results
    if any(e.startswith(f"{scenario}/{kind}:") for e in results.errors):
        return
    run_dir = bench.run_dir(f"{scenario}-{kind}")
    try:
        ref = ref_for(kind)
        synced = time.perf_counter()
        os.sync()  # untimed: no writeback left over from the previous run lands in this one
        synced = time.perf_counter() - synced
        # CPU of everything the run starts (reaped by the end of measure(): soci-wrapper reaps its own
        # containerd and soci, own_containerd reaps the blueprint's daemon); the registry is not counted.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = measure(ref, run_dir)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.detail["cpu_seconds"] = round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        )
        run.detail["sync_before_seconds"] = round(synced, 2)
        run.round = round_no
        check_registry(bench, scenario, template, ref, run, previous)
    except (BenchmarkError, WrapperError, OSError) as exc:
        results.errors.append(f"{scenario}/{kind}: {exc}")
        log(f"{scenario} {kind} round {round_no + 1}: FAILED: {exc}")
        return
    finally:
        unmount_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    results.runs.append(run)
    steps = ", ".join(
        f"{k} {v:.2f}" for k, v in run.steps.items() if not k.endswith("(untimed)") and v >= 0.005
    )
    rss = f"; python peak {run.detail['python_peak_mib']} MiB" if "python_peak_mib" in run.detail else ""
    log(f"{scenario} {kind} round {round_no + 1}: {run.seconds:.2f} s ({steps}){rss}")


def run_scenario(bench: Bench, scenario: str, rounds: int) -> None:
    args = bench.args
    names = SCENARIO_TEMPLATES[scenario]
    if scenario == "memory":
        for name in names:
            template = bench.templates[name]
            kind = f"wrapper {name}"

            def memory_run(ref: Reference, d: Path, kind: str = kind) -> Run:
                return run_wrapper(bench, scenario, kind, ref, d)

            def memory_ref(kind: str, name: str = name) -> Reference:
                return _fresh_repo(bench, kind.replace(" ", "-"), name)

            for round_no in range(args.memory_repeat):
                measure_once(bench, scenario, kind, round_no, memory_run, memory_ref, template)
        return
    if scenario in ("rebuild", "rebuild-mid"):
        target = bench.templates[names[1]]
        cache_tpl = bench.work / "cache-template"

        def rebuild_ref(kind: str) -> Reference:
            return _fresh_repo(bench, f"{scenario}-{kind}", names[1], previous="tpl/app-indexed")

        def cache_run(ref: Reference, d: Path) -> Run:
            cache = d / "cache"
            shutil.copytree(cache_tpl, cache)  # untimed: the cache as the previous build left it
            return run_wrapper(bench, scenario, "wrapper-cache-dir", ref, d, ["--cache-dir", str(cache)])

        kinds: list[tuple[str, Callable[[Reference, Path], Run]]] = [
            ("blueprint", lambda ref, d: run_blueprint(bench, scenario, target, ref, d)),
            (
                "wrapper-reuse-from",
                lambda ref, d: run_wrapper(
                    bench,
                    scenario,
                    "wrapper-reuse-from",
                    ref,
                    d,
                    ["--reuse-from", str(bench.reference(ref.repository, "v1"))],
                ),
            ),
            ("wrapper-cache-dir", cache_run),
        ]
        for round_no in range(rounds):
            for kind, measure in kinds:
                measure_once(
                    bench, scenario, kind, round_no, measure, rebuild_ref, target, bench.templates["app"]
                )
        return
    template = bench.templates[names[0]]
    extra = ["--all-platforms"] if isinstance(template.image, ImageIndex) else []
    cold: list[tuple[str, Callable[[Reference, Path], Run]]] = [
        ("blueprint", lambda ref, d: run_blueprint(bench, scenario, template, ref, d)),
        ("wrapper", lambda ref, d: run_wrapper(bench, scenario, "wrapper", ref, d, extra)),
        (
            "wrapper-no-overlap",
            lambda ref, d: run_wrapper(
                bench, scenario, "wrapper-no-overlap", ref, d, [*extra, "--no-overlap"]
            ),
        ),
        ("floor", lambda ref, d: run_floor(bench, scenario, template, ref, d)),
    ]
    link = _limited_link(LINK_RATE) if scenario == "cold-app-link" else nullcontext()
    with link:
        for round_no in range(rounds):
            for kind, measure in cold:
                measure_once(
                    bench,
                    scenario,
                    kind,
                    round_no,
                    measure,
                    lambda k: _fresh_repo(bench, f"{scenario}-{k}", names[0]),
                    template,
                )


@contextmanager
def _limited_link(rate: str) -> Iterator[None]:
    """All loopback traffic (the registry's) held to ``rate`` by a tbf qdisc on ``lo``, removed afterwards."""
    add = [
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "tbf",
        "rate",
        rate,
        "burst",
        "256kb",
        "latency",
        "100ms",
    ]
    done = subprocess.run(add, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"cannot limit the loopback link ({' '.join(add)}): {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, check=False)


def prepare_rebuilds(bench: Bench) -> None:
    """``tpl/app-indexed``: the previous build with its SOCI index (made by soci-wrapper, which also warms
    the template cache that each --cache-dir run starts from)."""
    bench.copier.copy("tpl/app", "tpl/app-indexed", {"v1": "v1"})
    cache = bench.work / "cache-template"
    started = time.monotonic()
    argv = [
        *bench.wrapper_argv,
        "index",
        str(bench.reference("tpl/app-indexed")),
        "--json",
        "--quiet",
        "--cache-dir",
        str(cache),
        "--work-dir",
        str(bench.work / "runs"),
    ]
    bench.run_wrapper(argv, "indexing the previous build")
    log(f"previous build indexed (tpl/app-indexed, cache {cache}) in {time.monotonic() - started:.1f} s")


# -- the whole run -------------------------------------------------------------------------------------------
def _push_templates(registry: RegistryServer, templates: dict[str, Template]) -> None:
    errors: list[BaseException] = []

    def push(template: Template) -> None:
        try:
            with RegistryClient(CredentialStore(use_ecr=False)) as client:
                push_image(client, Reference(registry.host, template.repository, tag="v1"), template.image)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=push, args=(t,), daemon=True) for t in templates.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchmarkError(f"pushing the images failed: {errors[0]}")
    total = sum(t.compressed_bytes() for t in templates.values())
    log(f"pushed {len(templates)} images ({total / MiB:.0f} MiB) in {time.monotonic() - started:.1f} s")


def wrapper_under_test(args: argparse.Namespace, work: Path) -> tuple[list[str], Path | None, str]:
    """How to run soci-wrapper (argv prefix, cwd, PYTHONPATH), and what it is. ``--wrapper-commit REV``:
    that commit's ``wrapper/`` (``git archive``, read-only for the repository) unpacked into the work
    directory and run from there, so edits made to the checkout during the run do not change what is
    measured. Otherwise ``--soci-wrapper`` or the checkout's console script."""
    if args.wrapper_commit:
        snapshot = work / "wrapper-snapshot"
        snapshot.mkdir()
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{args.wrapper_commit}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if commit.returncode != 0:
            raise BenchmarkError(f"--wrapper-commit {args.wrapper_commit}: {commit.stderr.strip()}")
        archive = subprocess.Popen(
            ["git", "-C", str(REPO_ROOT), "archive", commit.stdout.strip(), "wrapper"], stdout=subprocess.PIPE
        )
        untar = subprocess.run(["tar", "-x", "-C", str(snapshot)], stdin=archive.stdout, check=False)
        if archive.wait() != 0 or untar.returncode != 0:
            raise BenchmarkError(f"could not unpack wrapper/ of {args.wrapper_commit}")
        what = f"commit {commit.stdout.strip()[:12]} (wrapper/ unpacked with git archive)"
        return [sys.executable, "-m", "wrapper.cli.main"], snapshot, what
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "wrapper"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    what = f"checkout at {head or '?'}" + (f" with {len(dirty)} files changed in wrapper/" if dirty else "")
    if args.soci_wrapper:
        what = f"{args.soci_wrapper!r}"
    return soci_wrapper_command(args.soci_wrapper), None, what


def rounds_for(scenario: str, args: argparse.Namespace) -> int:
    return int(args.big_repeat) if scenario == "big" else int(args.repeat)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info()
    soci = find_soci(None)  # $SOCI_BIN, this Python's scripts (bootstrap links .deps/bin/soci there), PATH
    if soci is None:
        raise BenchmarkError("soci not found (run scripts/bootstrap.sh)")
    machine["soci"] = soci_version(soci)
    machine["nproc"] = os.cpu_count()
    containerd = shutil.which("containerd")
    if containerd is None:
        raise BenchmarkError("containerd is not installed")
    names = sorted({n for s in args.scenarios for n in SCENARIO_TEMPLATES[s]}, key=list(TEMPLATES).index)
    started = time.monotonic()
    with ExitStack() as stack:
        work = stack.enter_context(work_directory(args.work_dir, args.keep))
        layer_dir = args.cache_dir or work / "layers"
        templates = build_templates(names, layer_dir, work / "json-blobs")
        try:
            registry = start_registry(work / "registry")
        except SetupFailed as exc:
            raise BenchmarkError(f"docker-registry did not start: {exc}") from None
        stack.callback(registry.stop)
        _push_templates(registry, templates)
        client = stack.enter_context(RegistryClient(CredentialStore(use_ecr=False)))
        wrapper_argv, wrapper_root, machine["soci_wrapper"] = wrapper_under_test(args, work)
        log(f"soci-wrapper under test: {machine['soci_wrapper']}")
        docker_config = work / "docker-config"
        docker_config.mkdir()
        (docker_config / "config.json").write_text('{"auths": {}}')
        bench = Bench(
            args=args,
            work=work,
            registry=registry,
            client=client,
            copier=RepoCopier(client, registry.host),
            soci=soci,
            ctr=ctr_binary(),
            containerd=containerd,
            templates=templates,
            docker_config=docker_config,
            wrapper_argv=wrapper_argv,
            wrapper_cwd=wrapper_root,
            wrapper_pythonpath=str(wrapper_root) if wrapper_root else None,
        )
        (work / "runs").mkdir()
        if any(s in ("rebuild", "rebuild-mid") for s in args.scenarios):
            prepare_rebuilds(bench)
        for scenario in args.scenarios:
            log(
                f"== {scenario} ({rounds_for(scenario, args) if scenario != 'memory' else args.memory_repeat} rounds)"
            )
            run_scenario(bench, scenario, rounds_for(scenario, args))
        images = {name: describe_template(t) for name, t in templates.items()}
        layer_names = {str(size): n for t in templates.values() for size, n in t.layer_names.items()}
        results = bench.results
    report = build_report(args, machine, images, results, time.monotonic() - started)
    report["layer_names"] = layer_names
    return report


# -- the report ------------------------------------------------------------------------------------------------
KIND_ORDER = (
    "blueprint",
    "wrapper",
    "wrapper-no-overlap",
    "wrapper-reuse-from",
    "wrapper-cache-dir",
    "floor",
)


def _paired(runs: Sequence[Run], others: Sequence[Run]) -> float | None:
    """The median, over rounds, of this kind's time divided by the other kind's in the same round (runs
    a few seconds apart share the machine's load of the moment)."""
    by_round = {r.round: r.seconds for r in others}
    ratios = [r.seconds / by_round[r.round] for r in runs if r.round in by_round]
    return round(median(ratios), 3) if ratios else None


def _median_steps(runs: Sequence[Run]) -> dict[str, float]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.steps if k not in keys]
    return {k: round(median([r.steps.get(k, 0.0) for r in runs]), 3) for k in keys}


def build_report(
    args: argparse.Namespace,
    machine: dict[str, Any],
    images: dict[str, str],
    results: Results,
    elapsed: float,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    for scenario in args.scenarios:
        kinds = sorted(
            {r.kind for r in results.runs if r.scenario == scenario},
            key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 99, k),
        )
        base = results.median(scenario, "blueprint")
        floor = results.median(scenario, "floor")
        for kind in kinds:
            runs = results.of(scenario, kind)
            seconds = [r.seconds for r in runs]
            med = median(seconds)
            row: dict[str, Any] = {
                "scenario": scenario,
                "kind": kind,
                "runs": len(runs),
                "seconds": [round(s, 3) for s in seconds],
                "median": round(med, 3),
                "min": round(min(seconds), 3),
                "max": round(max(seconds), 3),
                "steps": _median_steps(runs),
            }
            cpu = [r.detail["cpu_seconds"] for r in runs if "cpu_seconds" in r.detail]
            if cpu:
                row["cpu_seconds"] = round(median(cpu), 2)
            if base is not None and kind != "blueprint":
                row["vs_blueprint"] = round(med / base, 3)
                row["paired_vs_blueprint"] = _paired(runs, results.of(scenario, "blueprint"))
            if floor is not None and kind.startswith("wrapper"):
                row["vs_floor"] = round(med / floor, 3)
                row["paired_vs_floor"] = _paired(runs, results.of(scenario, "floor"))
            if kind.startswith("wrapper"):
                for key in ("python_peak_mib", "wait4_maxrss_mib", "tree_peak_mib"):
                    values = [r.detail[key] for r in runs if key in r.detail]
                    if values:
                        row[key] = max(values)
                row["layers"] = runs[-1].detail.get("layers")
            rows.append(row)
            target = TARGETS.get((scenario, kind))
            if target is not None and "vs_blueprint" in row:
                verdicts.append(
                    {
                        "what": f"{scenario} {kind} / blueprint",
                        "value": row["vs_blueprint"],
                        "target": target,
                        "ok": row["vs_blueprint"] <= target,
                    }
                )
            sequential = results.median(scenario, "wrapper-no-overlap")
            if kind == "wrapper" and sequential is not None:
                row["vs_no_overlap"] = round(med / sequential, 3)
                row["paired_vs_no_overlap"] = _paired(runs, results.of(scenario, "wrapper-no-overlap"))
            # --no-overlap is there to compare, not a target; and behind a limited link the floor (no network)
            # is not the floor any more.
            if "vs_floor" in row and kind == "wrapper" and scenario != "cold-app-link":
                verdicts.append(
                    {
                        "what": f"{scenario} {kind} / floor",
                        "value": row["vs_floor"],
                        "target": FLOOR_TARGET,
                        "ok": row["vs_floor"] <= FLOOR_TARGET,
                    }
                )
    wrapper_rows = [r for r in rows if "python_peak_mib" in r]
    if wrapper_rows:
        peak = max(r["python_peak_mib"] for r in wrapper_rows)
        verdicts.append(
            {
                "what": "soci-wrapper peak RSS (Python process), MiB",
                "value": peak,
                "target": RSS_TARGET_MIB,
                "ok": peak <= RSS_TARGET_MIB,
            }
        )
        small = next((r for r in rows if r["kind"] == "wrapper mem05"), None)
        large = next((r for r in rows if r["kind"] == "wrapper mem4"), None)
        if small and large:
            growth = large["python_peak_mib"] / small["python_peak_mib"] - 1
            verdicts.append(
                {
                    "what": f"peak RSS growth 0.5 -> 4 GiB ({small['python_peak_mib']} -> "
                    f"{large['python_peak_mib']} MiB), fraction",
                    "value": round(growth, 3),
                    "target": FLAT_TOLERANCE,
                    "ok": growth <= FLAT_TOLERANCE,
                }
            )
    return {
        "benchmark": "index",
        "machine": machine,
        "repeat": args.repeat,
        "big_repeat": args.big_repeat,
        "memory_repeat": args.memory_repeat,
        "images": images,
        "rows": rows,
        "verdicts": verdicts,
        "runs": [r.__dict__ for r in results.runs],
        "errors": results.errors,
        "elapsed_seconds": round(elapsed, 1),
        "ok": not results.errors and all(v["ok"] for v in verdicts),
    }


def _copy_summary(runs: Sequence[Run], names: dict[str, str]) -> str:
    """Per layer: median seconds (after soci create started) when its copy to TMPDIR started, how long the
    copy took, and how long building the zTOC took after it."""
    per: dict[int, list[tuple[float, float, float]]] = {}
    for run in runs:
        for c in run.detail.get("copies", []):
            per.setdefault(c["bytes"], []).append(
                (c["appeared"], c["copied"] - c["appeared"], c["gone"] - c["copied"])
            )
    parts = []
    for size in sorted(per, key=lambda b: min(v[0] for v in per[b])):
        values = per[size]
        name = names.get(str(size), f"{size / MiB:.1f} MiB")
        start, copy, build = (median([v[i] for v in values]) for i in range(3))
        parts.append(f"{name} ({size / MiB:.0f} MiB) +{start:.2f}: copy {copy:.2f}, zTOC {build:.2f}")
    return "; ".join(parts)


def _create_split(run: Run) -> tuple[float, float] | None:
    """(soci create's seconds, seconds during which it was copying at least one layer to TMPDIR)."""
    create = run.detail.get("create_seconds", run.steps.get("create"))
    copies = run.detail.get("copies") or []
    if create is None or not copies:
        return None
    spans = sorted((c["appeared"], c["copied"]) for c in copies)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return float(create), busy


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"{m['nproc']} CPUs, {m['memory']} RAM, load average {m['load_average']} at the start; "
        f"containerd {m['containerd']}, soci {m['soci']}; {report['elapsed_seconds']:.0f} s in all",
        f"soci-wrapper: {m.get('soci_wrapper', '?')}",
        "images (compressed layer sizes):",
        *[f"  {text}" for text in report["images"].values()],
        "",
    ]
    table = []
    for r in report["rows"]:
        ratio = floor = ""
        if "vs_blueprint" in r:
            ratio = f"{r['vs_blueprint']:.2f} [{r['paired_vs_blueprint']:.2f}]"
            target = TARGETS.get((r["scenario"], r["kind"]))
            if target is not None:
                ratio += " ok" if r["vs_blueprint"] <= target else f" >{target:g}"
        if "vs_floor" in r:
            floor = f"{r['vs_floor']:.2f} [{r['paired_vs_floor']:.2f}]"
            floor += " ok" if r["vs_floor"] <= FLOOR_TARGET else f" >{FLOOR_TARGET:g}"
        rss = f"{r['python_peak_mib']:.0f} / {r['tree_peak_mib']:.0f}" if "python_peak_mib" in r else ""
        table.append(
            [
                r["scenario"],
                r["kind"],
                str(r["runs"]),
                f"{r['median']:.2f}",
                f"{r['min']:.2f}-{r['max']:.2f}",
                ratio,
                floor,
                f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "",
                rss,
            ]
        )
    lines.append(
        render_table(
            [
                "scenario",
                "kind",
                "runs",
                "median s",
                "min-max s",
                "x blueprint",
                "x floor",
                "CPU s",
                "RSS MiB py/tree",
            ],
            table,
        )
    )
    lines.append(
        "x blueprint, x floor: ratio of the medians [median of the per-round ratios]; CPU s: user+system "
        "seconds of all processes the run started (median); RSS: soci-wrapper's own peak / its process tree's"
    )
    lines += ["", "median seconds per step:"]
    for r in report["rows"]:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items() if v >= 0.005)
        lines.append(f"  {r['scenario']} {r['kind']}: {steps}")
    runs = [Run(**x) for x in report["runs"]]
    lines += ["", "soci create, per layer (median over runs; seconds after soci create started):"]
    for r in report["rows"]:
        those = [x for x in runs if x.scenario == r["scenario"] and x.kind == r["kind"]]
        out: list[str] = []
        summary = _copy_summary(those, report.get("layer_names", {}))
        if summary:
            out.append(f"    {summary}")
        splits = [split for x in those if (split := _create_split(x)) is not None]
        if splits:
            create, busy = median([c for c, _ in splits]), median([b for _, b in splits])
            out.append(
                f"    soci create {create:.2f} s, of which {busy:.2f} s ({100 * busy / create:.0f} %) copying layers "
                "out of containerd into TMPDIR"
            )
        gaps = [x.detail["last_download_to_create"] for x in those if "last_download_to_create" in x.detail]
        if gaps:
            out.append(f"    last layer downloaded -> soci create started: median {median(gaps):.2f} s")
        if out:
            lines += [f"  {r['scenario']} {r['kind']}:", *out]
    lines += verdict_lines(report)
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.index_benchmark",
        description="Time the CodeBuild blueprint flow and soci-wrapper index side by side.",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds per scenario (default: %(default)s)")
    parser.add_argument(
        "--big-repeat", type=int, help="rounds of the 'big' scenario (default: --repeat, at most 2)"
    )
    parser.add_argument(
        "--memory-repeat", type=int, default=1, help="runs per memory image (default: %(default)s)"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
        default=SCENARIOS,
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--soci-wrapper", metavar="COMMAND", help="how to run soci-wrapper, split on spaces")
    parser.add_argument(
        "--wrapper-commit",
        metavar="REV",
        help="measure this commit's wrapper/ (unpacked with git archive), not the checkout as it is",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per command")
    parser.add_argument("--work-dir", type=Path, help="where the temporary directory goes (default: $TMPDIR)")
    parser.add_argument("--cache-dir", type=Path, help="keep the built layers here and reuse them next time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(
            f"--scenarios: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(SCENARIOS)}"
        )
    if args.repeat < 1 or args.memory_repeat < 1 or (args.big_repeat is not None and args.big_repeat < 1):
        parser.error("repeats must be at least 1")
    if args.big_repeat is None:
        args.big_repeat = min(args.repeat, 2)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(
        "index",
        parse_args(argv),
        run_benchmark,
        render,
        why_root="it starts containerd daemons",
        failures=(BenchmarkError, WrapperError),
    )


__all__ = ["main", "render", "run_benchmark"]

if __name__ == "__main__":
    with suppress(BrokenPipeError):
        sys.exit(main())

"""Start-up: a container from a full pull, lazily through a SOCI V2 index, and lazily with a recorded prefetch
list, side by side in one run.

    sudo .venv/bin/python -m benchmarks.startup_benchmark [--repeat 5] [--shapes unread-sdk,reads-all] \\
        [--latency-ms 20] [--rate-mbps 50] [--cache-dir DIR] [--wrapper-commit REV] [--json]

Images of real files from this machine (benchmarks/startup_images.py: Debian's python3 and its standard library,
the Go toolchain as a large layer; two workloads) are pushed to Debian's docker-registry on loopback and indexed
with soci-wrapper: ``index --soci-version V2 --output-tag v1-soci``; then one start of each image is recorded
(``startup --no-lazy --record FILE``) and the image indexed again with that list (``--prefetch-files-json FILE
--output-tag v1-soci-pf``). All of that is set-up, untimed.

Then, round after round, each variant is started with ``soci-wrapper startup`` through a proxy that adds
``--latency-ms`` to every request and caps every response body at ``--rate-mbps`` (slow_registry.py; this
kernel has no netem), the order of the variants rotating from round to round:

``full``           ``startup IMAGE:v1 --no-lazy``: every layer downloaded and unpacked into overlayfs;
``lazy``           ``startup IMAGE:v1-soci``: soci-snapshotter-grpc with its default pull modes (V2) and
                   prefetch enabled (the index has no prefetch artifacts);
``lazy-prefetch``  ``startup IMAGE:v1-soci-pf``: the same with the recorded list's prefetch artifacts.

Every start gets a fresh containerd (2.x: ``--containerd-bin``) and snapshotter, made by ``startup`` itself
(which also counts the bytes fetched); the disk is synced before each (untimed). The figures are ``startup``'s
own: ``pull`` (until the root filesystem is there), ``ready`` (container created until the workload exited 0),
``total`` (pull and ready), bytes fetched. Each lazy start's run directory is kept until the snapshotter's log is
read. The proxy's request log cut into the start's phases (startup_timeline.py) says where the time went.
benchmarks/README.md has the figures and what they say.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO_ROOT,
    BenchmarkError,
    SetupFailed,
    log,
    machine_info,
    work_directory,
)
from benchmarks._main import benchmark_main
from benchmarks._procwatch import CommandTimeout, Watched, run_watched, unmount_under
from benchmarks.index_benchmark import wrapper_under_test
from benchmarks.slow_registry import LinkSettings, TimedProxy, check_link, slow_registry
from benchmarks.startup_images import DEFAULT_SDK, SHAPES, ShapeImage, build_shape_images
from benchmarks.startup_report import Results, Run, build_report, link_summary, render
from benchmarks.startup_timeline import Window, snapshotter_log, snapshotter_summary, timeline
from tests.fixtures.registry import RegistryServer, start_registry
from tests.imagefactory import push_image
from wrapper.containerd.daemon import containerd_binary_version
from wrapper.core.errors import WrapperError
from wrapper.core.options import DEFAULT_PREFETCH_MAX_FILES, sample_prefetch
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.binary import find_soci, soci_version
from wrapper.soci.snapshotter import check_snapshotter


@dataclass(frozen=True)
class Variant:
    tag: str  # of the image it starts
    index_args: tuple[str, ...] | None = None  # None: the plain image (a full pull); else how it was indexed
    prefetch: bool = False  # indexed with the recorded list


SPECS = {
    "full": Variant("v1"),
    "lazy": Variant("v1-soci", ()),
    "lazy-prefetch": Variant("v1-soci-pf", (), prefetch=True),
    # Not run by default: every layer of 1 MiB or more indexed (the python base layer too), to show what a
    # smaller --min-layer-size does, without and with the recorded list.
    "lazy-1mib": Variant("v1-soci-1mib", ("--min-layer-size", "1MiB")),
    "lazy-1mib-prefetch": Variant("v1-soci-1mib-pf", ("--min-layer-size", "1MiB"), prefetch=True),
}
VARIANTS = ("full", "lazy", "lazy-prefetch")
REPOSITORY = "bench/{shape}"
CONTAINERD2 = REPO_ROOT / ".deps" / "containerd2" / "bin" / "containerd"


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    registry: RegistryServer
    proxy: TimedProxy
    images: dict[str, ShapeImage]
    wrapper_argv: list[str]
    wrapper_cwd: Path | None
    containerd: str
    snapshotter: str
    soci: str
    docker_config: Path
    results: Results = field(default_factory=Results)
    counter: int = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
        env["DOCKER_CONFIG"] = str(self.docker_config)
        if self.wrapper_cwd is not None:
            env["PYTHONPATH"] = str(self.wrapper_cwd)
        return env

    def run_dir(self, label: str) -> Path:
        self.counter += 1
        path = self.work / "runs" / f"{self.counter:03d}-{label}"
        path.mkdir(parents=True)
        return path

    def wrapper(self, args: Sequence[str], what: str) -> Watched:
        try:
            watched = run_watched(
                [*self.wrapper_argv, *args],
                timeout=self.args.timeout,
                env=self.env(),
                cwd=self.wrapper_cwd,
                interval=0.25,  # light sampling: the machine has 2 cores
            )
        except CommandTimeout as exc:
            raise BenchmarkError(f"{what}: {exc}") from None
        if watched.returncode != 0:
            raise BenchmarkError(f"{what} exited with {watched.returncode}:\n{watched.tail(12)}")
        return watched

    def ref(self, shape: str, tag: str, *, via_proxy: bool = False) -> str:
        host = self.proxy.host if via_proxy else self.registry.host
        return f"{host}/{REPOSITORY.format(shape=shape)}:{tag}"


def _json_of(watched: Watched, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(watched.stdout)
    except ValueError:
        raise BenchmarkError(f"{what} printed no JSON: {watched.stdout[-300:]!r}") from None
    if not isinstance(doc, dict):
        raise BenchmarkError(f"{what} printed JSON that is no object")
    return doc


# -- set-up ----------------------------------------------------------------------------------------------------
def index_image(
    bench: Bench, shape: str, tag: str, prefetch: Path | None = None, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """``soci-wrapper index`` (V2) of the shape's image to ``tag``; what it made (zTOCs, prefetch artifacts)."""
    work = bench.run_dir(f"index-{shape}-{tag}")
    args = ["index", bench.ref(shape, "v1"), "--soci-version", "V2", "--output-tag", tag, "--json", "--quiet"]
    args += ["--work-dir", str(work), "--soci-bin", bench.soci, *extra]
    if prefetch is not None:
        args += [
            "--prefetch-files-json",
            str(prefetch),
            "--prefetch-max-files",
            str(bench.args.prefetch_max_files),
        ]
    watched = bench.wrapper(args, f"soci-wrapper index {shape} -> {tag}")
    shutil.rmtree(work, ignore_errors=True)
    report = _json_of(watched, "soci-wrapper index")
    indexes = report.get("indexes") or []
    if report.get("status") != "indexed" or not indexes:
        raise BenchmarkError(f"soci-wrapper index {shape} -> {tag}: status {report.get('status')!r}")
    idx = indexes[0]
    prefetched = idx.get("prefetch") or []
    if prefetch is not None and not prefetched:
        raise BenchmarkError(f"soci-wrapper index {shape} -> {tag}: no prefetch artifact made")
    return {
        "seconds": round(watched.seconds, 2),
        "ztocs": idx.get("ztocs"),
        "prefetch_artifacts": [{"spans": p.get("spans"), "ranges": p.get("ranges")} for p in prefetched],
        "prefetch_not_found": len(idx.get("prefetch_not_found") or []),
    }


def record_start(bench: Bench, shape: str) -> Path:
    """One start from a full pull (straight to the registry) with ``--record``: the files it opened until ready."""
    work = bench.run_dir(f"record-{shape}")
    record = bench.work / f"prefetch-{shape}.json"
    args = ["startup", bench.ref(shape, "v1"), "--no-lazy", "--record", str(record), "--json"]
    args += [
        "--work-dir",
        str(work),
        "--containerd-bin",
        bench.containerd,
        "--timeout",
        str(bench.args.timeout),
    ]
    watched = bench.wrapper(args, f"soci-wrapper startup --record ({shape})")
    shutil.rmtree(work, ignore_errors=True)
    files = json.loads(record.read_text())
    if not isinstance(files, list) or not files:
        raise BenchmarkError(f"startup --record ({shape}) recorded nothing")
    sizes = {path: size for layer in bench.images[shape].layers for path, size in layer.sizes.items()}
    used = sample_prefetch(files, bench.args.prefetch_max_files, sizes)  # the tool's own choice, with sizes
    record.write_text(json.dumps(used))
    bench.results.setup.setdefault("recorded", {})[shape] = {
        "files": len(files),
        "listed": len(used),
        "seconds": round(watched.seconds, 2),
    }
    return record


def prepare_shape(bench: Bench, shape: str) -> None:
    """Index the shape's image for every lazy variant (recording a start first when one needs the list)."""
    record = None
    for variant in bench.args.variants:
        spec = SPECS[variant]
        if spec.index_args is None:
            continue
        if spec.prefetch and record is None:
            record = record_start(bench, shape)
        made = index_image(bench, shape, spec.tag, record if spec.prefetch else None, spec.index_args)
        bench.results.setup.setdefault("index", {}).setdefault(shape, {})[variant] = made
    log(
        f"{shape}: indexed {json.dumps(bench.results.setup['index'][shape])}; recorded {bench.results.setup.get('recorded')}"
    )


def push_images(registry: RegistryServer, images: dict[str, ShapeImage]) -> None:
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        for shape, built in images.items():
            ref = Reference(registry.host, REPOSITORY.format(shape=shape), tag="v1")
            push_image(client, ref, built.image)


# -- one start ----------------------------------------------------------------------------------------------
def run_variant(bench: Bench, shape: str, variant: str, round_no: int) -> Run:
    run_dir = bench.run_dir(f"{shape}-{variant}")
    args = [
        "startup",
        bench.ref(shape, SPECS[variant].tag, via_proxy=True),
        "--json",
        "--work-dir",
        str(run_dir),
    ]
    args += ["--keep-work-dir", "--containerd-bin", bench.containerd, "--timeout", str(bench.args.timeout)]
    args += ["--no-lazy"] if variant == "full" else ["--snapshotter-bin", bench.snapshotter]
    try:
        os.sync()  # untimed: no writeback left over from the previous run lands in this one
        bench.proxy.reset()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        spawned = time.monotonic()
        watched = bench.wrapper(args, f"startup {shape} {variant}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        fetches = bench.proxy.fetch_log()
        report = _json_of(watched, "soci-wrapper startup")
        (v,) = report["variants"]
        name = "full" if variant == "full" else "lazy"
        pull_line = watched.line_time(f"==> {name}: pull")
        layers: dict[str, int] = {}
        for layer in v.get("layers", []):
            layers[layer["how"]] = layers.get(layer["how"], 0) + 1
        names = {x.layer.digest: x.plan_name for x in bench.images[shape].layers}
        run = Run(
            shape,
            variant,
            round_no,
            pull=float(v["pull_seconds"]),
            ready=float(v["ready_seconds"]),
            total=float(v["total_seconds"]),
            fetched=int(v["bytes_fetched"]),
            requests=int(v.get("registry_requests") or 0),
            wall=watched.seconds,
            setup=float(v.get("setup_seconds") or 0.0),
            layers=layers,
            cpu=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        )
        run.detail["layer_seconds"] = {
            names.get(x["digest"], x["digest"][7:19]): [x["how"], float(x["seconds"])]
            for x in v.get("layers", [])
        }
        image = bench.images[shape].image
        if pull_line is not None:
            window = Window(spawned + pull_line, run.pull, run.ready)
            digests = {layer.digest for layer in image.layers}
            run.detail["timeline"] = timeline(fetches, window, digests, image.config.digest)
        if variant != "full":
            run.detail["snapshotter"] = snapshotter_summary(snapshotter_log(run_dir))
            if not run.layers.get("lazy"):
                raise BenchmarkError(f"startup {shape} {variant}: no layer was mounted lazily ({run.layers})")
        return run
    finally:
        unmount_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def measure(bench: Bench, shape: str, variant: str, round_no: int) -> None:
    if any(e.startswith(f"{shape}/{variant}:") for e in bench.results.errors):
        return
    try:
        run = run_variant(bench, shape, variant, round_no)
    except (BenchmarkError, WrapperError, OSError, KeyError, ValueError) as exc:
        bench.results.errors.append(f"{shape}/{variant}: {exc}")
        log(f"{shape} {variant} round {round_no + 1}: FAILED: {exc}")
        return
    bench.results.runs.append(run)
    log(
        f"{shape} {variant} round {round_no + 1}: pull {run.pull:.2f} s, ready {run.ready:.2f} s, total "
        f"{run.total:.2f} s, {run.fetched / 1e6:.1f} MB in {run.requests} requests (command {run.wall:.2f} s)"
    )


def _rotated(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- the whole run ------------------------------------------------------------------------------------------
def _programs(args: argparse.Namespace) -> tuple[str, str, str]:
    containerd = str(args.containerd_bin or CONTAINERD2)
    if not Path(containerd).is_file():
        raise BenchmarkError(
            f"containerd 2.x not found at {containerd} (scripts/bootstrap.sh builds it; or --containerd-bin)"
        )
    snapshotter, why = check_snapshotter(args.snapshotter_bin)
    if snapshotter is None:
        raise BenchmarkError(f"soci-snapshotter-grpc: {why}")
    soci = find_soci(None)
    if soci is None:
        raise BenchmarkError("soci not found (run scripts/bootstrap.sh)")
    for program in ("runc", "containerd-shim-runc-v2"):
        if shutil.which(program) is None:
            raise BenchmarkError(f"{program} is not installed (Debian's runc and containerd packages)")
    return containerd, snapshotter, soci


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info()
    containerd, snapshotter, soci = _programs(args)
    machine["soci"] = soci_version(soci)
    machine["containerd"] = containerd_binary_version(containerd)
    settings = LinkSettings(args.latency_ms / 1000, args.rate_mbps * 1e6)
    started = time.monotonic()
    with ExitStack() as stack:
        work = stack.enter_context(work_directory(args.work_dir, args.keep))
        layer_dir = args.cache_dir or work / "layers"
        log(f"building the images' layers in {layer_dir} (reused when there)")
        images = build_shape_images(layer_dir, tuple(args.shapes), sdk=args.sdk_dir)
        for built in images.values():
            log(built.describe())
        try:
            registry = start_registry(work / "registry")
        except SetupFailed as exc:
            raise BenchmarkError(f"docker-registry did not start: {exc}") from None
        stack.callback(registry.stop)
        push_images(registry, images)
        proxy = stack.enter_context(slow_registry(registry.host, settings))
        wrapper_argv, wrapper_cwd, machine["soci_wrapper"] = wrapper_under_test(args, work)
        docker_config = work / "docker-config"
        docker_config.mkdir()
        (docker_config / "config.json").write_text('{"auths": {}}')
        bench = Bench(
            args, work, registry, proxy, images, wrapper_argv, wrapper_cwd, containerd, snapshotter, soci,
            docker_config,
        )  # fmt: skip
        (work / "runs").mkdir()
        some = next(iter(images.values()))
        blob = some.layers[1].layer.digest  # the standard library's layer, ~15 MB
        link = check_link(
            proxy.host, registry.host, f"/v2/{REPOSITORY.format(shape=some.shape)}/blobs/{blob}"
        )
        log(f"slow registry at {proxy.host}: {settings.describe()}; {link.describe()}")
        for shape in args.shapes:
            prepare_shape(bench, shape)
        machine["load_average_after_setup"] = [round(x, 2) for x in os.getloadavg()]
        for round_no in range(args.repeat):
            for shape in args.shapes:
                for variant in _rotated(args.variants, round_no):
                    measure(bench, shape, variant, round_no)
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        bench.results.images = {shape: built.describe() for shape, built in images.items()}
    bench.results.machine = machine
    bench.results.link = link_summary(settings, link)
    return build_report(args, bench.results, time.monotonic() - started)


# -- command line ----------------------------------------------------------------------------------------------
def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.startup_benchmark",
        description="Time a container's start from a full pull, lazily (SOCI V2), and lazily with a recorded "
        "prefetch list, side by side.",
    )
    what = parser.add_argument_group("what is measured")
    what.add_argument("--repeat", type=int, default=5, help="rounds (default: %(default)s)")
    what.add_argument("--shapes", type=_names, default=SHAPES, help=f"from {','.join(SHAPES)} (default: all)")
    what.add_argument(
        "--variants",
        type=_names,
        default=VARIANTS,
        help=f"from {','.join(SPECS)} (default: {','.join(VARIANTS)})",
    )
    what.add_argument(
        "--sdk-dir", type=Path, default=DEFAULT_SDK, help="the large layer (default: %(default)s)"
    )
    what.add_argument(
        "--prefetch-max-files",
        type=int,
        default=DEFAULT_PREFETCH_MAX_FILES,
        help="at most this many recorded files go into the prefetch list (default: %(default)s; files of 1 MiB "
        "or more first, as index --prefetch-max-files would with their sizes: wrapper.core.options.sample_prefetch)",
    )
    link = parser.add_argument_group("the registry's link")
    link.add_argument("--latency-ms", type=float, default=20.0, help="added to every request (default: 20)")
    link.add_argument("--rate-mbps", type=float, default=50.0, help="MB/s per stream (default: 50)")
    programs = parser.add_argument_group("programs")
    programs.add_argument("--containerd-bin", type=Path, help=f"containerd 2.x (default: {CONTAINERD2})")
    programs.add_argument(
        "--snapshotter-bin", help="soci-snapshotter-grpc (default: as soci-wrapper finds it)"
    )
    programs.add_argument(
        "--soci-wrapper", metavar="COMMAND", help="how to run soci-wrapper, split on spaces"
    )
    programs.add_argument(
        "--wrapper-commit",
        metavar="REV",
        help="measure this commit's wrapper/ (unpacked with git archive), not the checkout as it is",
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--timeout", type=float, default=600, help="seconds allowed per command (default: 600)")
    run.add_argument("--work-dir", type=Path, help="where its temporary directory goes (default: $TMPDIR)")
    run.add_argument("--cache-dir", type=Path, help="keep the built layers here and reuse them next time")
    run.add_argument("--keep", action="store_true", help="keep the temporary directory")
    run.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown or not args.shapes:
        parser.error(f"--shapes: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(SHAPES)}")
    bad = [v for v in args.variants if v not in SPECS]
    if bad or "full" not in args.variants or "lazy" not in args.variants:
        parser.error(
            f"--variants: full, lazy and any of {', '.join(SPECS)} (not {', '.join(bad) or 'without them'})"
        )
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.latency_ms < 0 or args.rate_mbps <= 0:
        parser.error("--latency-ms must be >= 0 and --rate-mbps > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(
        "startup",
        parse_args(argv),
        run_benchmark,
        render,
        why_root="it starts containerd, the snapshotter and containers",
        failures=(BenchmarkError, WrapperError, FileNotFoundError),
    )


__all__ = ["main", "render", "run_benchmark"]

if __name__ == "__main__":
    with suppress(BrokenPipeError):
        sys.exit(main())

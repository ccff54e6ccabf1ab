"""Pull speed: ``ctr`` against ``soci-wrapper pull --full`` and sparse ``soci-wrapper pull``, in one run.

    sudo .venv/bin/python -m benchmarks.pull_benchmark [--total-mib 300] [--layers 8] [--repeat 3] [--json]

Builds a deterministic multi-layer image (tests/imagefactory.py; a few layers under soci's 10 MiB minimum),
pushes it to Debian's docker-registry on loopback, and times each of these as a subprocess, wall clock
from spawn to exit, ``--repeat`` times:

``ctr-pull``        ``ctr images pull --plain-http REF`` (fetch and unpack into the overlayfs snapshotter)
``ctr-fetch``       ``ctr content fetch --plain-http REF`` (fetch only: what soci-wrapper does too)
``wrapper-full``    ``soci-wrapper pull --full REF`` (every layer)
``wrapper-sparse``  ``soci-wrapper pull REF`` (layers under --min-layer-size are not downloaded)

Fairness: every single measurement gets a containerd of its own, started (untimed) in a fresh directory,
so its content store is empty: containerd shares blobs across namespaces, so a second pull into the same
daemon would find them present. All runs read the same registry, whose files are in the page cache after
the push. The order of the four rotates from round to round, and the disk is synced (untimed) before each
run so that no writeback from the previous one lands in it. After each run (untimed) the content store is
checked: all of the image's blobs, or for the sparse pull exactly the large layers, config and manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    MB,
    BenchmarkError,
    MiB,
    Setup,
    check_content,
    ctr_binary,
    fresh_containerd,
    image_in_registry,
    layer_sizes,
    log,
    machine_info,
    median,
    render_table,
    run_timed,
    soci_wrapper_command,
    work_directory,
)
from wrapper.cli.main import parse_size
from wrapper.core.errors import WrapperError
from wrapper.core.options import DEFAULT_MIN_LAYER_SIZE

KINDS = ("ctr-pull", "ctr-fetch", "wrapper-full", "wrapper-sparse")
LABELS = {
    "ctr-pull": "ctr images pull (fetch+unpack)",
    "ctr-fetch": "ctr content fetch (no unpack)",
    "wrapper-full": "soci-wrapper pull --full",
    "wrapper-sparse": "soci-wrapper pull (sparse)",
}


@dataclass
class Run:
    seconds: float
    bytes: int
    in_process_seconds: float | None = None  # soci-wrapper's own "seconds" (the transfer, without startup)


@dataclass
class KindResult:
    kind: str
    label: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "label": self.label, "error": self.error}
        if self.runs:
            seconds = [r.seconds for r in self.runs]
            med = median(seconds)
            out.update(
                seconds=[round(s, 3) for s in seconds],
                median_seconds=round(med, 3),
                min_seconds=round(min(seconds), 3),
                bytes=self.runs[0].bytes,
                mb_per_s=round(self.runs[0].bytes / MB / med, 1),
            )
            inner = [r.in_process_seconds for r in self.runs if r.in_process_seconds is not None]
            if inner:
                out["median_in_process_seconds"] = round(median(inner), 3)
        return out


def measure(kind: str, setup: Setup, work: Path, run_no: int, args: argparse.Namespace) -> Run:
    namespace = f"bench-{kind}-{run_no}"
    with fresh_containerd(work, f"containerd-{kind}-{run_no}") as daemon:
        address = daemon.address
        ctr = [ctr_binary(), "--address", address, "-n", namespace]
        wrapper = [
            *soci_wrapper_command(args.soci_wrapper),
            "pull",
            setup.ref,
            "--plain-http",
            "--containerd-address",
            address,
            "--namespace",
            namespace,
            "--json",
            "--quiet",
        ]
        if kind == "ctr-pull":
            cmd = [*ctr, "images", "pull", "--plain-http", setup.ref]
        elif kind == "ctr-fetch":
            cmd = [*ctr, "content", "fetch", "--plain-http", setup.ref]
        elif kind == "wrapper-full":
            cmd = [*wrapper, "--full"]
        else:
            cmd = [*wrapper, "--min-layer-size", str(args.min_layer_size)]
        os.sync()  # untimed: no writeback left over from the previous run lands in this one
        timed = run_timed(cmd, timeout=args.timeout)
        if timed.returncode != 0:
            raise timed.failure(LABELS[kind])

        sparse = kind == "wrapper-sparse"
        expected = setup.expected_sparse(args.min_layer_size) if sparse else setup.expected_full()
        check_content(address, namespace, expected)
        size = setup.sparse_bytes(args.min_layer_size) if sparse else setup.total_bytes
        run = Run(timed.seconds, size)
        if kind == "ctr-pull":
            snapshots = run_timed([*ctr, "snapshots", "ls"], timeout=60)
            count = len(snapshots.stdout.strip().splitlines()) - 1  # minus the header
            if snapshots.returncode != 0 or count != len(setup.image.layers):
                raise BenchmarkError(
                    f"ctr images pull left {count} snapshots, expected {len(setup.image.layers)} "
                    "(did it unpack?)"
                )
        if kind.startswith("wrapper"):
            try:
                report = json.loads(timed.stdout)
            except ValueError:
                raise BenchmarkError(f"soci-wrapper printed no JSON: {timed.stdout[-300:]!r}") from None
            if int(report["bytes_downloaded"]) != size:
                raise BenchmarkError(
                    f"soci-wrapper downloaded {report['bytes_downloaded']} bytes, expected {size}"
                )
            run.in_process_seconds = float(report["seconds"])
        return run


def ratio(a: KindResult, b: KindResult) -> float | None:
    if not a.runs or not b.runs:
        return None
    return round(median([r.seconds for r in a.runs]) / median([r.seconds for r in b.runs]), 2)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info()  # before anything runs: the load average says how busy the machine was
    sizes = layer_sizes(args.total_mib, args.layers)
    results = {kind: KindResult(kind, LABELS[kind]) for kind in args.kinds}
    with (
        work_directory(args.work_dir, args.keep) as work,
        image_in_registry(work, sizes, cache_dir=args.cache_dir) as setup,
    ):
        for round_no in range(args.repeat):
            order = list(args.kinds[round_no % len(args.kinds) :]) + list(
                args.kinds[: round_no % len(args.kinds)]
            )
            for kind in order:
                result = results[kind]
                if result.error is not None:
                    continue
                try:
                    run = measure(kind, setup, work, round_no, args)
                except (BenchmarkError, WrapperError) as exc:
                    result.error = str(exc)
                    log(f"{kind} run {round_no + 1}: FAILED: {exc}")
                    continue
                result.runs.append(run)
                extra = f" (in-process {run.in_process_seconds:.2f} s)" if run.in_process_seconds else ""
                log(f"{kind} run {round_no + 1}/{args.repeat}: {run.seconds:.2f} s{extra}")
        image = {
            "reference": setup.ref,
            "layers": [{"digest": layer.digest, "size": layer.size} for layer in setup.image.layers],
            "total_bytes": setup.total_bytes,
            "sparse_bytes": setup.sparse_bytes(args.min_layer_size),
            "min_layer_size": args.min_layer_size,
        }
    ratios: dict[str, float | None] = {}
    for wrapper_kind in ("wrapper-full", "wrapper-sparse"):
        for ctr_kind in ("ctr-pull", "ctr-fetch"):
            if wrapper_kind in results and ctr_kind in results:
                ratios[f"{wrapper_kind}/{ctr_kind}"] = ratio(results[wrapper_kind], results[ctr_kind])
    return {
        "benchmark": "pull",
        "machine": machine,
        "repeat": args.repeat,
        "image": image,
        "results": [r.summary() for r in results.values()],
        "ratios": ratios,
        "fairness": "a fresh containerd (empty content store) for every measurement; order rotated per round",
        "ok": all(r.error is None for r in results.values()),
    }


def render(report: dict[str, Any]) -> str:
    image = report["image"]
    lines = [
        f"image: {len(image['layers'])} layers, {image['total_bytes'] / MiB:.1f} MiB "
        f"(sparse: {image['sparse_bytes'] / MiB:.1f} MiB of layers >= {image['min_layer_size'] / MiB:g} MiB); "
        f"{report['repeat']} runs each; {report['machine']['cpus']} CPUs; containerd {report['machine']['containerd']}",
        "",
    ]
    ratios = report["ratios"]
    rows = []
    for r in report["results"]:
        if r.get("error"):
            rows.append([r["label"], "FAILED", "", "", "", "", ""])
            continue
        vs_pull = ratios.get(f"{r['kind']}/ctr-pull")
        vs_fetch = ratios.get(f"{r['kind']}/ctr-fetch")
        rows.append(
            [
                r["label"],
                f"{r['bytes'] / MiB:.1f}",
                f"{r['median_seconds']:.2f}",
                f"{r['min_seconds']:.2f}",
                f"{r['mb_per_s']:.0f}",
                f"{vs_pull:.2f}" if vs_pull is not None else "",
                f"{vs_fetch:.2f}" if vs_fetch is not None else "",
            ]
        )
    lines.append(render_table(["", "MiB", "median s", "min s", "MB/s", "/ctr pull", "/ctr fetch"], rows))
    lines.append("")
    lines.append(
        "ratios are soci-wrapper's median time / ctr's median time (below 1: soci-wrapper is faster)"
    )
    for r in report["results"]:
        if r.get("median_in_process_seconds") is not None:
            lines.append(
                f"{r['label']}: {r['median_in_process_seconds']:.2f} s of the median is the transfer itself "
                "(soci-wrapper's own timer); the rest is process startup, resolving and connecting"
            )
        if r.get("error"):
            lines.append(f"{r['label']} FAILED: {r['error']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pull_benchmark",
        description="Time ctr and soci-wrapper pulling the same image from a loopback registry.",
    )
    parser.add_argument(
        "--total-mib", type=float, default=300, help="image size in MiB (default: %(default)s)"
    )
    parser.add_argument("--layers", type=int, default=8, help="number of layers (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (default: %(default)s)")
    parser.add_argument(
        "--min-layer-size",
        type=parse_size,
        default=DEFAULT_MIN_LAYER_SIZE,
        help="soci-wrapper's sparse threshold (default: 10MiB)",
    )
    parser.add_argument(
        "--kinds",
        type=lambda s: tuple(k.strip() for k in s.split(",") if k.strip()),
        default=KINDS,
        help=f"comma-separated subset of {','.join(KINDS)} (default: all)",
    )
    parser.add_argument(
        "--soci-wrapper",
        metavar="COMMAND",
        help="how to run soci-wrapper, split on spaces (default: the soci-wrapper next to this Python)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per command")
    parser.add_argument("--work-dir", type=Path, help="where the temporary directory goes (default: $TMPDIR)")
    parser.add_argument("--cache-dir", type=Path, help="keep built layers here and reuse them next time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        parser.error(f"--kinds: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(KINDS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_benchmark(args)
    except (BenchmarkError, WrapperError) as exc:
        print(f"pull benchmark failed: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"benchmark": "pull", "ok": False, "error": str(exc)}))
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1


__all__ = ["KindResult", "Run", "main", "render", "run_benchmark"]

if __name__ == "__main__":
    sys.exit(main())

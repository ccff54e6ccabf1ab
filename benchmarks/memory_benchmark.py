"""Peak memory of ``soci-wrapper pull --full`` on a large image (default 1 GiB); the target is under 150 MiB.

    sudo .venv/bin/python -m benchmarks.memory_benchmark [--total-mib 1024] [--layers 8] [--limit-mib 150] [--json]

Builds a deterministic image (tests/imagefactory.py; layers are streamed to disk, several at once), pushes
it to Debian's docker-registry on loopback, starts a private containerd, and runs the soci-wrapper CLI
attached to it (``--containerd-address``, so the daemon's memory is not the CLI's). The peak resident set
of the CLI process is what the kernel reports for it when it is reaped (``wait4``'s ``ru_maxrss``, the
same figure as ``/usr/bin/time -v``'s "Maximum resident set size"); /proc/PID/status is also sampled
every 20 ms as a cross-check.

A baseline run pulls only the manifest and config (sparse, with a minimum layer size above every layer):
the memory of the program itself (Python, grpc, urllib3, ...), without any blob data flowing.

Exits 1 if the full pull's peak is above ``--limit-mib`` or anything fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import (
    MB,
    BenchmarkError,
    Expected,
    MiB,
    Setup,
    check_content,
    fresh_containerd,
    image_in_registry,
    layer_sizes,
    log,
    machine_info,
    soci_wrapper_command,
    work_directory,
)
from wrapper.core.errors import WrapperError

DEFAULT_LIMIT_MIB = 150.0


@dataclass
class Measured:
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    max_rss_kib: int  # from wait4
    sampled_max_rss_kib: int  # the largest VmRSS seen in /proc/PID/status


def _rss_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def run_measured(cmd: Sequence[str], *, timeout: float) -> Measured:
    """Run ``cmd``; its wall time, output, and peak RSS (wait4 on exactly this child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        sampled = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal sampled
            while not done.wait(0.02):
                rss = _rss_kib(proc.pid)
                if rss is not None:
                    sampled = max(sampled, rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        killer = threading.Timer(timeout, kill)
        killer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            done.set()
            sampler.join()
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
        if timed_out.is_set():
            raise BenchmarkError(f"{cmd[0]} did not finish within {timeout:g} s")
        out.seek(0)
        err.seek(0)
        return Measured(
            seconds=elapsed,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            max_rss_kib=int(usage.ru_maxrss),
            sampled_max_rss_kib=sampled,
        )


def pull(
    setup: Setup, work: Path, name: str, extra: Sequence[str], expected: Expected, args: argparse.Namespace
) -> tuple[Measured, dict[str, Any]]:
    """One ``soci-wrapper pull`` into a fresh containerd, measured; checks the content store afterwards."""
    with fresh_containerd(work, f"containerd-{name}") as daemon:
        cmd = [
            *soci_wrapper_command(args.soci_wrapper),
            "pull",
            setup.ref,
            "--plain-http",
            "--containerd-address",
            daemon.address,
            "--namespace",
            name,
            "--json",
            "--quiet",
            *extra,
        ]
        if args.max_concurrent_downloads is not None:
            cmd += ["--max-concurrent-downloads", str(args.max_concurrent_downloads)]
        os.sync()
        measured = run_measured(cmd, timeout=args.timeout)
        if measured.returncode != 0:
            tail = "\n".join(measured.stderr.strip().splitlines()[-8:])
            raise BenchmarkError(f"soci-wrapper pull exited with {measured.returncode}:\n{tail}")
        try:
            report = json.loads(measured.stdout)
        except ValueError:
            raise BenchmarkError(f"soci-wrapper printed no JSON: {measured.stdout[-300:]!r}") from None
        check_content(daemon.address, name, expected)
        return measured, report


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info()  # before anything runs: the load average says how busy the machine was
    sizes = layer_sizes(args.total_mib, args.layers)
    limit_kib = int(args.limit_mib * 1024)
    with (
        work_directory(args.work_dir, args.keep) as work,
        image_in_registry(work, sizes, cache_dir=args.cache_dir) as setup,
    ):
        baseline: dict[str, Any] | None = None
        if args.baseline:
            above_all = max(layer.size for layer in setup.image.layers) + 1
            metadata_only = Expected(
                frozenset({setup.image.config.digest, setup.image.manifest.digest}),
                frozenset(layer.digest for layer in setup.image.layers),
            )
            measured, _report = pull(
                setup, work, "baseline", ["--min-layer-size", str(above_all)], metadata_only, args
            )
            baseline = {
                "max_rss_mib": round(measured.max_rss_kib / 1024, 1),
                "sampled_max_rss_mib": round(measured.sampled_max_rss_kib / 1024, 1),
                "seconds": round(measured.seconds, 2),
            }
            log(f"baseline (manifest and config only): peak RSS {baseline['max_rss_mib']} MiB")

        runs = []
        for i in range(args.repeat):
            measured, report = pull(setup, work, f"full-{i}", ["--full"], setup.expected_full(), args)
            if int(report["bytes_downloaded"]) != setup.total_bytes:
                raise BenchmarkError(
                    f"soci-wrapper downloaded {report['bytes_downloaded']} bytes, expected {setup.total_bytes}"
                )
            runs.append(
                {
                    "max_rss_mib": round(measured.max_rss_kib / 1024, 1),
                    "sampled_max_rss_mib": round(measured.sampled_max_rss_kib / 1024, 1),
                    "seconds": round(measured.seconds, 2),
                    "in_process_seconds": float(report["seconds"]),
                    "mb_per_s": round(setup.total_bytes / MB / measured.seconds, 1),
                    "max_rss_kib": measured.max_rss_kib,
                }
            )
            log(
                f"full pull {i + 1}/{args.repeat}: peak RSS {runs[-1]['max_rss_mib']} MiB, "
                f"{measured.seconds:.1f} s"
            )
        image = {
            "reference": setup.ref,
            "layers": [{"digest": layer.digest, "size": layer.size} for layer in setup.image.layers],
            "total_bytes": setup.total_bytes,
        }
    peak_kib = max(int(r["max_rss_kib"]) for r in runs)
    return {
        "benchmark": "memory",
        "machine": machine,
        "image": image,
        "command": "soci-wrapper pull --full (attached to a private containerd)",
        "max_concurrent_downloads": args.max_concurrent_downloads,
        "baseline": baseline,
        "runs": runs,
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "limit_mib": args.limit_mib,
        "ok": peak_kib <= limit_kib,
    }


def render(report: dict[str, Any]) -> str:
    image = report["image"]
    lines = [
        f"image: {len(image['layers'])} layers, {image['total_bytes'] / MiB:.1f} MiB; "
        f"{report['machine']['cpus']} CPUs; containerd {report['machine']['containerd']}",
    ]
    if report["baseline"]:
        b = report["baseline"]
        lines.append(f"baseline (manifest + config only): peak RSS {b['max_rss_mib']:.1f} MiB")
    for i, r in enumerate(report["runs"], 1):
        lines.append(
            f"full pull {i}: peak RSS {r['max_rss_mib']:.1f} MiB (sampled {r['sampled_max_rss_mib']:.1f}), "
            f"{r['seconds']:.1f} s, {r['mb_per_s']:.0f} MB/s"
        )
    verdict = "OK" if report["ok"] else "OVER THE LIMIT"
    lines.append(
        f"peak RSS {report['peak_rss_mib']:.1f} MiB; target under {report['limit_mib']:g} MiB: {verdict}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_benchmark",
        description="Peak RSS of soci-wrapper pull --full on a large image.",
    )
    parser.add_argument(
        "--total-mib", type=float, default=1024, help="image size in MiB (default: %(default)s)"
    )
    parser.add_argument("--layers", type=int, default=8, help="number of layers (default: %(default)s)")
    parser.add_argument(
        "--limit-mib",
        type=float,
        default=DEFAULT_LIMIT_MIB,
        help="the target peak RSS (default: %(default)s)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="full pulls to measure (default: %(default)s)")
    parser.add_argument(
        "--max-concurrent-downloads", type=int, help="passed to soci-wrapper (default: its own default)"
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline run")
    parser.add_argument(
        "--soci-wrapper",
        metavar="COMMAND",
        help="how to run soci-wrapper, split on spaces (default: the soci-wrapper next to this Python)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per pull")
    parser.add_argument("--work-dir", type=Path, help="where the temporary directory goes (default: $TMPDIR)")
    parser.add_argument("--cache-dir", type=Path, help="keep built layers here and reuse them next time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_benchmark(args)
    except (BenchmarkError, WrapperError) as exc:
        print(f"memory benchmark failed: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"benchmark": "memory", "ok": False, "error": str(exc)}))
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1


__all__ = ["main", "render", "run_benchmark", "run_measured"]

if __name__ == "__main__":
    sys.exit(main())

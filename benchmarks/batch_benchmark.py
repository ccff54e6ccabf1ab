"""How many images at once (``index REF REF ... --max-concurrent-images N``) is fastest on this machine.

    .venv/bin/python -m benchmarks.batch_benchmark [--images 10] [--repeat 3]

Ten images (a shared 16 MiB layer and one of their own), pushed to a loopback registry, indexed (V1,
``--no-reuse``) with N = 1..4 in one run, alternating; prints the median wall time per N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.registry import start_registry
from tests.imagefactory import LayerSpec, build_image, push_image
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times: dict[int, list[float]] = {n: [] for n in (1, 2, 3, 4)}
    with tempfile.TemporaryDirectory() as tmp, start_registry(Path(tmp) / "registry") as registry:
        client = RegistryClient(CredentialStore(use_ecr=False))
        for round_ in range(args.repeat):
            for n in times:
                refs = []
                for i in range(args.images):
                    layers = [
                        LayerSpec(16 * MIB, seed=1),
                        LayerSpec(16 * MIB, seed=1000 * round_ + 100 * n + i),
                    ]
                    image = build_image(Path(tmp) / "images", layers)
                    ref = Reference(registry.host, f"batch{round_}-{n}/app{i}", tag="v1")
                    refs.append(str(ref.with_digest(push_image(client, ref, image))))
                argv = [
                    sys.executable,
                    "-m",
                    "wrapper.cli.main",
                    "index",
                    *refs,
                    "--json",
                    "--quiet",
                    "--no-reuse",
                ]
                started = time.monotonic()
                proc = subprocess.run(
                    [*argv, "--max-concurrent-images", str(n)], capture_output=True, text=True, cwd=ROOT
                )
                times[n].append(time.monotonic() - started)
                summary = json.loads(proc.stdout)["summary"]
                print(f"round {round_ + 1}, {n} at once: {times[n][-1]:.1f} s {summary}", flush=True)
        client.close()
    for n, values in times.items():
        print(
            f"--max-concurrent-images {n}: median {statistics.median(values):.1f} s "
            f"({min(values):.1f}-{max(values):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

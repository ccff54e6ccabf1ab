"""The end of a benchmark's ``main`` (and of its rendered report): root check, SIGTERM taken as Ctrl-C, the
report as text or JSON, and the exit status (0; 1 when a step failed or a target was missed; 130 when
interrupted)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def benchmark_main(
    name: str,
    args: argparse.Namespace,
    produce: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    *,
    why_root: str,
    failures: tuple[type[BaseException], ...],
) -> int:
    """Run ``produce(args)`` (the benchmark; it stops and removes what it started on any exception) and print its
    report (``args.json``: as JSON); ``failures`` are reported in one line (and as JSON with ``args.json``)."""
    if os.geteuid() != 0:
        print(f"{name} benchmark: needs root ({why_root})", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = produce(args)
    except KeyboardInterrupt:
        print(
            f"{name} benchmark: interrupted; everything it started was stopped and removed", file=sys.stderr
        )
        return 130
    except failures as exc:
        print(f"{name} benchmark failed: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"benchmark": name, "ok": False, "error": str(exc)}))
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The end of a rendered report: each target with its value, then each failed step."""
    lines = ["", "targets:"]
    for v in report["verdicts"]:
        lines.append(f"  {v['what']}: {v['value']} (target <= {v['target']}) {'OK' if v['ok'] else 'MISSED'}")
    return lines + [f"FAILED {error}" for error in report["errors"]]


__all__ = ["benchmark_main", "verdict_lines"]

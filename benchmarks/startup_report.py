"""The start-up benchmark's results: each start (``Run``), the report (medians, ratios, targets, where the time
goes) and its text form."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import median, render_table
from benchmarks._main import verdict_lines
from benchmarks.slow_registry import LinkCheck, LinkSettings

# (shape, variant, against): variant's median total <= value x against's.
TARGETS = {("unread-sdk", "lazy", "full"): 0.3, ("unread-sdk", "lazy-prefetch", "lazy"): 0.7}


@dataclass
class Run:
    shape: str
    variant: str
    round: int
    pull: float
    ready: float
    total: float
    fetched: int
    requests: int
    wall: float  # the whole ``startup`` command: Python's start, containerd and the snapshotter starting, cleanup
    setup: float  # startup's set-up (containerd, snapshotter): in no total
    cpu: float = (
        0.0  # user+system seconds of the command and everything it started (containerd, snapshotter...)
    )
    layers: dict[str, int] = field(default_factory=dict)  # how -> layers (lazy, remote, unpacked)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)  # what indexing and recording made
    machine: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)  # the slow registry's settings and what they measured
    images: dict[str, str] = field(default_factory=dict)  # shape -> what its image holds


def link_summary(settings: LinkSettings, link: LinkCheck) -> dict[str, Any]:
    return {
        "settings": settings.describe(),
        "added_ms": round(link.added_ms, 1),
        "direct_ms": round(link.direct_ms, 2),
        "one_stream_mbps": round(link.one_stream_mbps, 1),
        "two_streams_mbps": [round(x, 1) for x in link.two_streams_mbps],
    }


def _of(runs: Sequence[Run], shape: str, variant: str) -> list[Run]:
    return [r for r in runs if r.shape == shape and r.variant == variant]


def _paired(runs: Sequence[Run], others: Sequence[Run]) -> float | None:
    """Median over rounds of this variant's total / the other's in the same round."""
    by_round = {r.round: r.total for r in others}
    ratios = [r.total / by_round[r.round] for r in runs if by_round.get(r.round)]
    return round(median(ratios), 3) if ratios else None


def _median_phase(runs: Sequence[Run], phase: str) -> dict[str, Any]:
    stats = [r.detail["timeline"][phase] for r in runs if "timeline" in r.detail]
    if not stats:
        return {}
    out: dict[str, Any] = {}
    for key in ("busy", "idle", "most_at_once", "spans_alone", "span_seconds"):
        out[key] = round(median([s[key] for s in stats]), 3)
    for key in ("requests", "bytes"):
        kinds = sorted({k for s in stats for k in s[key]})
        out[key] = {k: median([s[key].get(k, 0) for s in stats]) for k in kinds}
    return out


def _rows(args: argparse.Namespace, runs_of: Sequence[Run]) -> list[dict[str, Any]]:
    """Per shape and variant: median seconds, bytes and requests, the ratios to full and lazy, the phases."""
    rows: list[dict[str, Any]] = []
    for shape in args.shapes:
        medians = {
            v: median([r.total for r in runs]) for v in args.variants if (runs := _of(runs_of, shape, v))
        }
        for variant in args.variants:
            runs = _of(runs_of, shape, variant)
            if not runs:
                continue
            row: dict[str, Any] = {"shape": shape, "variant": variant, "runs": len(runs)}
            for key in ("pull", "ready", "total", "wall", "setup", "cpu"):
                row[key] = round(median([getattr(r, key) for r in runs]), 3)
            row["total_min"] = round(min(r.total for r in runs), 3)
            row["total_max"] = round(max(r.total for r in runs), 3)
            row["fetched"] = int(median([r.fetched for r in runs]))
            row["requests"] = int(median([r.requests for r in runs]))
            row["layers"] = runs[-1].layers
            per_layer = [r.detail.get("layer_seconds", {}) for r in runs]
            row["layer_seconds"] = {
                name: [how, round(median([p[name][1] for p in per_layer if name in p]), 3)]
                for name, (how, _) in per_layer[-1].items()
            }
            row["phases"] = {p: _median_phase(runs, p) for p in ("pull", "run")}
            for against in ("full", "lazy"):
                others = _of(runs_of, shape, against)
                if against != variant and others and against in medians:
                    row[f"x_{against}"] = round(row["total"] / medians[against], 3)
                    row[f"paired_x_{against}"] = _paired(runs, others)
            rows.append(row)
    return rows


def _verdicts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    totals = {(r["shape"], r["variant"]): r["total"] for r in rows}
    out = []
    for (shape, variant, against), target in TARGETS.items():
        if (shape, variant) in totals and (shape, against) in totals:
            value = round(totals[shape, variant] / totals[shape, against], 3)
            out.append(
                {
                    "what": f"{shape}: {variant} / {against}",
                    "value": value,
                    "target": target,
                    "ok": value <= target,
                }
            )
    return out


def build_report(args: argparse.Namespace, results: Results, elapsed: float) -> dict[str, Any]:
    rows = _rows(args, results.runs)
    verdicts = _verdicts(rows)
    return {
        "benchmark": "startup",
        "ok": not results.errors and all(v["ok"] for v in verdicts),
        "errors": results.errors,
        "verdicts": verdicts,
        "rows": rows,
        "machine": results.machine,
        "link": results.link,
        "images": results.images,
        "setup": results.setup,
        "repeat": args.repeat,
        "elapsed_seconds": round(elapsed, 1),
        "runs": [r.__dict__ for r in results.runs],
    }


def _phase_line(name: str, phase: dict[str, Any]) -> str:
    if not phase:
        return f"{name}: -"
    kinds = ", ".join(
        f"{k} {phase['requests'][k]:g} ({phase['bytes'].get(k, 0) / 1e6:.1f} MB)" for k in phase["requests"]
    )
    return (
        f"{name}: {kinds or 'no requests'}; in flight {phase['busy']:.2f} s, none in flight {phase['idle']:.2f} s, "
        f"at most {phase['most_at_once']:g} at once; span fetches {phase['span_seconds']:.2f} s summed, "
        f"{phase['spans_alone']:g} of them alone"
    )


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    link = report["link"]
    lines = [
        f"{m['cpus']} CPUs, {m['memory']} RAM, kernel {m['kernel']}; load average {m['load_average']} at the start, "
        f"{m.get('load_average_after_setup')} after set-up, {m.get('load_average_at_end')} at the end",
        f"containerd {m['containerd']}, soci {m['soci']}; "
        f"soci-wrapper: {m.get('soci_wrapper', '?')}; {report['elapsed_seconds']:.0f} s in all",
        f"registry: {link['settings']}; measured +{link['added_ms']} ms per request, {link['one_stream_mbps']} MB/s "
        f"one stream, {' and '.join(str(x) for x in link['two_streams_mbps'])} MB/s two at once",
        "images:",
        *[f"  {text}" for text in report["images"].values()],
        f"set-up: {json.dumps(report['setup'])}",
        "",
    ]
    table = []
    for r in report["rows"]:
        ratio = ""
        for against in ("full", "lazy"):
            if f"x_{against}" in r:
                paired = r.get(f"paired_x_{against}")
                ratio += f"{r[f'x_{against}']:.2f} [{paired:.2f}] x {against}  " if paired else ""
        table.append(
            [
                r["shape"],
                r["variant"],
                str(r["runs"]),
                f"{r['pull']:.2f}",
                f"{r['ready']:.2f}",
                f"{r['total']:.2f}",
                f"{r['total_min']:.2f}-{r['total_max']:.2f}",
                f"{r['fetched'] / 1e6:.1f}",
                str(r["requests"]),
                f"{r['cpu']:.1f}",
                ratio.strip(),
            ]
        )
    headers = [
        "shape",
        "variant",
        "runs",
        "pull s",
        "ready s",
        "total s",
        "total min-max",
        "MB fetched",
        "requests",
        "CPU s",
    ]
    lines.append(render_table([*headers, "ratio of medians [paired]"], table))
    lines += ["", "where the time goes (medians; from the slow registry's request log):"]
    for r in report["rows"]:
        per_layer = ", ".join(f"{name} {how} {sec:.2f} s" for name, (how, sec) in r["layer_seconds"].items())
        lines.append(f"  {r['shape']} {r['variant']}: layers {per_layer}")
        for phase in ("pull", "run"):
            lines.append(f"    {_phase_line(phase, r['phases'].get(phase, {}))}")
    prefetch = {
        f"{run['shape']} {run['variant']}": run["detail"]["snapshotter"]["prefetch_artifacts"]
        for run in report["runs"]
        if run["detail"].get("snapshotter", {}).get("prefetch_artifacts")
    }
    for which, loaded in prefetch.items():
        lines.append(
            f"  {which}: the snapshotter's log says it loaded prefetch artifacts of {loaded} span ranges"
        )
    lines += verdict_lines(report)
    return "\n".join(lines)


__all__ = ["TARGETS", "Results", "Run", "build_report", "link_summary", "render"]

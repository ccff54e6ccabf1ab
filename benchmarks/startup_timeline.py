"""Where a start's time goes: the slow registry's request log and the snapshotter's log, cut into the start's
phases.

Every request the start makes reaches the registry through the benchmark's proxy (slow_registry.py), with when
it arrived, when its last body byte went out, its bytes and its Range. With the image's digests each request is
one of:

``manifest``  a manifest (the image's, the SOCI index manifest's tag lookups);
``config``    the image config;
``soci``      a blob that is no layer and no config: the SOCI index, zTOCs, prefetch artifacts;
``layer``     a whole layer (a full pull; a layer without zTOC the snapshotter fetches and unpacks);
``span``      a range of a layer: the snapshotter fetching a span (on a FUSE read, or prefetching);
``probe``     a range of a few bytes (the snapshotter checks the blob and its gzip header when it mounts);
``head``      a HEAD request.

Phases, on the proxy's clock: ``pull`` from soci-wrapper's ``==> VARIANT: pull`` line until the root filesystem
is there (``pull_seconds`` later), ``run`` from then until ready (``ready_seconds``; it includes creating the
container). Per phase: requests and bytes of each kind, the time at least one request was in flight (``busy``),
the most in flight at once, and the span fetches that ran alone (no other request in flight: fetched one after
another, each waiting for the one before). In the run phase, the time with no request in flight is the
workload itself: its CPU and its reads served from what is already there (page cache, the snapshotter's span
cache through FUSE).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.slow_registry import Fetch

KINDS = ("manifest", "config", "soci", "layer", "span", "probe", "head")
_PROBE_BYTES = 64


def classify(fetch: Fetch, layers: set[str], config: str) -> str:
    if fetch.method == "HEAD":
        return "head"
    if "/manifests/" in fetch.path:
        return "manifest"
    digest = fetch.path.rsplit("/", 1)[-1]
    if digest == config:
        return "config"
    if digest not in layers:
        return "soci"
    if fetch.range:
        return "probe" if fetch.bytes <= _PROBE_BYTES else "span"
    return "layer"


def _busy(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals``."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@dataclass
class PhaseStats:
    seconds: float
    requests: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    busy: float = 0.0  # at least one request in flight
    idle: float = 0.0  # none in flight
    most_at_once: int = 0
    spans_alone: int = 0  # span fetches during which no other request was in flight
    span_seconds: float = 0.0  # their summed durations, all span fetches

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "bytes": self.bytes,
            "busy": round(self.busy, 3),
            "idle": round(self.idle, 3),
            "most_at_once": self.most_at_once,
            "spans_alone": self.spans_alone,
            "span_seconds": round(self.span_seconds, 3),
        }


def phase_stats(fetches: Sequence[Fetch], kinds: Sequence[str], start: float, end: float) -> PhaseStats:
    """What the requests that arrived in [start, end) did (their intervals cut at ``end``)."""
    stats = PhaseStats(max(0.0, end - start))
    chosen = [(f, k) for f, k in zip(fetches, kinds, strict=True) if start <= f.start < end]
    intervals = [(f.start, min(max(f.end, f.start), end)) for f, _ in chosen]
    for i, ((fetch, kind), (s, e)) in enumerate(zip(chosen, intervals, strict=True)):
        stats.requests[kind] = stats.requests.get(kind, 0) + 1
        stats.bytes[kind] = stats.bytes.get(kind, 0) + fetch.bytes
        if kind == "span":
            stats.span_seconds += e - s
            if not any(j != i and a < e and b > s for j, (a, b) in enumerate(intervals)):
                stats.spans_alone += 1
    stats.busy = _busy(intervals)
    stats.idle = max(0.0, stats.seconds - stats.busy)
    stats.most_at_once = _most_at_once(intervals) if intervals else 0
    return stats


@dataclass(frozen=True)
class Window:
    """A start's phases on the proxy's clock (``time.monotonic()``)."""

    pull_start: float
    pull_seconds: float
    ready_seconds: float

    @property
    def pull_end(self) -> float:
        return self.pull_start + self.pull_seconds

    @property
    def ready_end(self) -> float:
        return self.pull_end + self.ready_seconds


def timeline(fetches: Sequence[Fetch], window: Window, layers: set[str], config: str) -> dict[str, Any]:
    """The ``pull`` and ``run`` phases' stats, and the request log (seconds from the pull's start)."""
    kinds = [classify(f, layers, config) for f in fetches]
    pull = phase_stats(fetches, kinds, window.pull_start, window.pull_end)
    run = phase_stats(fetches, kinds, window.pull_end, window.ready_end)
    log = [
        {
            "at": round(f.start - window.pull_start, 3),
            "seconds": round(f.seconds, 3),
            "kind": k,
            "bytes": f.bytes,
            "range": f.range,
            "path": f.path.rsplit("/", 1)[-1][:19],
            "agent": f.user_agent.split("/", 1)[0],
        }
        for f, k in zip(fetches, kinds, strict=True)
    ]
    return {"pull": pull.to_dict(), "run": run.to_dict(), "requests": log}


# -- the snapshotter's log ---------------------------------------------------------------------------------
def snapshotter_log(run_dir: Path) -> Path | None:
    """The lazy variant's soci-snapshotter-grpc log in a kept ``startup`` run directory, if there is one."""
    found = sorted(run_dir.glob("*/lazy/snapshotter/soci-snapshotter-grpc.log"))
    return found[0] if found else None


def snapshotter_summary(path: Path | None) -> dict[str, Any]:
    """From the snapshotter's JSON log: the prefetch artifacts it loaded (span ranges each), and its warnings and
    errors (the first few)."""
    out: dict[str, Any] = {"prefetch_artifacts": [], "warnings": [], "errors": 0}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        msg = str(entry.get("msg", ""))
        level = str(entry.get("level", ""))
        if msg.startswith("Successfully loaded prefetch artifact with "):
            out["prefetch_artifacts"].append(int(msg.split(" with ", 1)[1].split()[0]))
        if level == "warning" and len(out["warnings"]) < 5:
            out["warnings"].append(msg[:200])
        if level in ("error", "fatal"):
            out["errors"] += 1
    return out


__all__ = [
    "KINDS",
    "PhaseStats",
    "Window",
    "classify",
    "phase_stats",
    "snapshotter_log",
    "snapshotter_summary",
    "timeline",
]

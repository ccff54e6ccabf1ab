"""What ``startup`` reports: per variant (lazy through the SOCI snapshotter, full pull through overlayfs) the
time to pull, the time to ready, the total and the bytes fetched from the registry; with both, a verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from wrapper.startup.rootfs import LayerOutcome

LAZY, FULL = "lazy", "full"


@dataclass(frozen=True)
class PrefetchLoaded:
    """A prefetch artifact the snapshotter loaded for ``layer`` (its log says so): it fetched the spans of its
    ``span_ranges`` before it mounted the layer."""

    layer: str
    artifact: str
    span_ranges: int | None = None  # None: its log did not say


@dataclass
class VariantReport:
    """One start of the container. Seconds: ``pull`` from the first request to the registry until the root
    filesystem is there; ``ready`` from Containers.Create until ready; ``total`` from the pull's start until
    ready. ``setup`` (containerd and the snapshotter starting) counts in none of them: a node has them running.
    ``bytes_fetched``: response bytes from the registry (see ``bytes_counted_by``)."""

    name: str
    snapshotter: str
    via: str = ""
    setup_seconds: float = 0.0
    pull_seconds: float = 0.0
    ready_seconds: float = 0.0
    total_seconds: float = 0.0
    bytes_fetched: int = 0
    registry_requests: int | None = None
    bytes_counted_by: str = ""
    layers: list[LayerOutcome] = field(default_factory=list)
    fuse_mounts: int = 0
    exit_status: int | None = None
    prefetch: list[PrefetchLoaded] = field(default_factory=list)  # lazy: the index's prefetch artifacts used

    @property
    def lazy_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.how == "lazy")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("setup_seconds", "pull_seconds", "ready_seconds", "total_seconds"):
            out[key] = round(out[key], 3)
        out["layers"] = [
            {"digest": x.digest, "size": x.size, "how": x.how, "seconds": round(x.seconds, 3)}
            for x in self.layers
        ]
        out["lazy_layers"] = self.lazy_layers
        return out


@dataclass
class StartupReport:
    image: str
    digest: str
    platform: str
    args: list[str]
    readiness: str
    variants: list[VariantReport] = field(default_factory=list)
    verdict: str | None = None
    lazy_loses: bool | None = None
    warnings: list[str] = field(default_factory=list)
    recorded: list[str] | None = None
    record_file: str | None = None

    def variant(self, name: str) -> VariantReport | None:
        return next((v for v in self.variants if v.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "platform": self.platform,
            "args": self.args,
            "readiness": self.readiness,
            "variants": [v.to_dict() for v in self.variants],
            "verdict": self.verdict,
            "lazy_loses": self.lazy_loses,
            "warnings": self.warnings,
            "recorded": {"file": self.record_file, "files": self.recorded}
            if self.recorded is not None
            else None,
        }


def not_lazy_warning(lazy: VariantReport) -> str | None:
    """What to tell a user whose image the SOCI snapshotter did not load lazily at all."""
    if lazy.lazy_layers or lazy.fuse_mounts:
        return None
    return (
        "the SOCI snapshotter (with its default config) did not load this image lazily: it found no SOCI index "
        "it uses, so every layer was downloaded and unpacked. A V1 index is ignored by soci-snapshotter-grpc "
        "v0.10 and later unless its config has [pull_modes.soci_v1] enable = true; index with "
        "--soci-version V2 (and start the image's --output-tag) for lazy loading with a stock snapshotter"
    )


def verdict(lazy: VariantReport, full: VariantReport) -> tuple[str, bool]:
    """One line comparing the two totals, and whether lazy loading lost."""
    if full.total_seconds <= 0:
        return "no comparison: the full pull took no measurable time", False
    ratio = lazy.total_seconds / full.total_seconds
    gap = abs(full.total_seconds - lazy.total_seconds)
    fetched = f"{_size(lazy.bytes_fetched)} fetched instead of {_size(full.bytes_fetched)}"
    if lazy.total_seconds < full.total_seconds:
        return (
            f"lazily, the container was ready {gap:.2f} s sooner than from a full pull "
            f"({lazy.total_seconds:.2f} s vs {full.total_seconds:.2f} s, {ratio:.2f}x; {fetched})",
            False,
        )
    return (
        f"lazily, the container was ready {gap:.2f} s LATER than from a full pull ({lazy.total_seconds:.2f} s "
        f"vs {full.total_seconds:.2f} s, {ratio:.2f}x; {fetched}): indexing does not pay for this image, whose "
        "start reads most of what it pulls (lazy loading pays FUSE and a registry round trip per span read)",
        True,
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"

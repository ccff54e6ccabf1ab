"""What a run reports: per platform, the SOCI index and what soci did with each layer (``--json`` carries
these dataclasses as they are), and the collector that turns soci's events into that report and progress."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from wrapper.core.models import SOCI_LAYER_DIGEST_ANNOTATION, PlatformImage
from wrapper.core.progress import Reporter, human_size, short_digest


@dataclass(frozen=True)
class SociEvent:
    """One thing soci reported while it worked.

    ``kind``: ``built``/``reused``/``skipped`` (a layer's zTOC, from create and convert), ``prefetch`` (a
    prefetch artifact made for layer ``digest``; ``detail`` is its digest), ``prefetch-missing`` (``detail``, a
    listed file, is in no indexed layer), ``index`` (push started on a SOCI index),
    ``uploading``/``uploaded``/``exists`` (push: an artifact), ``retry`` (the wrapper is about to run a
    failed push again; ``detail`` says why).
    """

    kind: Literal[
        "built",
        "reused",
        "skipped",
        "prefetch",
        "prefetch-missing",
        "index",
        "uploading",
        "uploaded",
        "exists",
        "retry",
    ]
    digest: str = ""
    ztoc: str = ""
    detail: str = ""


EventSink = Callable[[SociEvent], None]

# A SOCI index's prefetch artifact: {"version": "1.0", "prefetch_spans": [{"start_span": N, "end_span": M}]},
# tied to its layer by the layer digest annotation (soci v0.15.0, soci/prefetch.go).
SOCI_PREFETCH = "application/vnd.amazon.soci.prefetch.v1+json"


@dataclass
class LayerInfo:
    digest: str
    size: int


@dataclass
class LayerReport:
    """What soci did with one layer: ``built`` a zTOC, ``reused`` one it already had, or ``skipped`` it
    (``reason``: under --min-layer-size, or a format soci cannot index)."""

    digest: str
    size: int
    status: str
    ztoc: str | None = None
    reason: str | None = None
    source: str | None = None  # reused: "cache", or "registry IMAGE_REF"
    during_pull: bool = (
        False  # built: while the rest of the image was still downloading (wrapper.soci.prebuild)
    )


@dataclass
class PrefetchArtifact:
    """A prefetch artifact of a SOCI index: which spans of ``layer`` the snapshotter fetches before it mounts
    the layer (``ranges`` runs of consecutive spans, ``spans`` in all)."""

    digest: str
    layer: str
    spans: int
    ranges: int


@dataclass
class PlatformIndex:
    platform: str
    manifest_digest: str
    soci_index_digest: str
    ztocs: int = 0
    layers_indexed: list[LayerInfo] = field(default_factory=list)
    layers_skipped: list[LayerInfo] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    # With a prefetch list: the index's prefetch artifacts, and the listed files found in no indexed layer
    # (as soci matches them: cleaned, without a leading slash).
    prefetch: list[PrefetchArtifact] = field(default_factory=list)
    prefetch_not_found: list[str] = field(default_factory=list)

    def prefetch_summary(self, shown: int = 3) -> str | None:
        """One line for the human summary: the prefetch artifacts and the listed files in no indexed layer."""
        if not self.prefetch and not self.prefetch_not_found:
            return None
        spans = sum(p.spans for p in self.prefetch)
        n = len(self.prefetch)
        text = f"prefetch: {n} artifact{'' if n == 1 else 's'} ({spans} span{'' if spans == 1 else 's'})"
        if missing := self.prefetch_not_found:
            names = ", ".join(missing[:shown]) + (
                f" and {len(missing) - shown} more" if len(missing) > shown else ""
            )
            text += (
                f"; {len(missing)} listed file{'' if len(missing) == 1 else 's'} in no indexed layer: {names}"
            )
        return text


@dataclass
class PlatformSkipped:
    """A selected platform that gets no SOCI index, and why."""

    platform: str
    manifest_digest: str
    reason: str


@dataclass
class RecordedPrefetch:
    """``index --record-prefetch``: the start that was recorded, and the files it opened before it was ready
    (in first-access order), which became (part of) the index's prefetch list."""

    files: list[str]
    seconds: float  # the whole recording: its containerd, the full pull, the start, the clean-up
    platform: str
    image: str  # the image started, pinned by digest
    args: list[str]  # the container's command
    readiness: str
    pull_seconds: float = 0.0
    ready_seconds: float = 0.0
    how: str = "from a full pull through overlayfs"

    @property
    def count(self) -> int:
        return len(self.files)


@dataclass
class IndexReport:
    image: str
    digest: str
    soci_version: str
    # indexed; already-indexed (the registry has it); not-an-image (the reference names a SOCI index or a
    # SOCI-enabled image: nothing to do, as for a push event of soci-wrapper's own output)
    status: Literal["indexed", "already-indexed", "not-an-image"]
    platforms: list[str]
    indexes: list[PlatformIndex] = field(default_factory=list)
    not_indexed: list[PlatformSkipped] = field(default_factory=list)
    pushed_tag: str | None = None
    output_digest: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    pull: dict[str, Any] | None = None
    push: dict[str, Any] | None = None
    reason: str | None = None  # why nothing was done (not-an-image)
    work_dir: str | None = None
    prefetch_files: int = 0  # paths in the list soci is given (--prefetch-file/-files-json, recorded)
    prefetch_files_dropped: int = 0  # paths left out of it by --prefetch-max-files (a warning says so)
    warnings: list[str] = field(default_factory=list)  # also printed as the run goes (not with --json alone)
    recorded: RecordedPrefetch | None = None  # --record-prefetch: what the recorded start opened

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.recorded is not None:
            out["recorded"]["count"] = self.recorded.count
        return out


MAX_MISSING_LINES = 5  # listed files in no indexed layer shown as progress; the report has them all


def note_missing(reporter: Reporter, noted: list[str], path: str) -> None:
    """Note ``path``, a listed file soci found in no indexed layer, in ``noted``; show the first few."""
    if path in noted:
        return
    noted.append(path)
    if len(noted) <= MAX_MISSING_LINES:
        reporter.info(f"    prefetch: {path} is in no indexed layer")
    elif len(noted) == MAX_MISSING_LINES + 1:
        reporter.info("    prefetch: more listed files are in no indexed layer (the report has them all)")


class LayerEvents:
    """Collects what soci says about each layer of one platform, and shows it as progress."""

    def __init__(self, reporter: Reporter, key: str, image: PlatformImage) -> None:
        self.reporter = reporter
        self.key = key
        self.sizes = {layer.digest: layer.size for layer in image.layers}
        self.layers: dict[str, SociEvent] = {}
        self.prefetch: dict[str, str] = {}  # layer digest -> its prefetch artifact
        self.missing: list[str] = []  # listed files in no indexed layer

    def __call__(self, event: SociEvent) -> None:
        if event.kind == "prefetch" and event.digest in self.sizes:
            self.prefetch[event.digest] = event.detail
            self.reporter.info(
                f"    prefetch artifact for layer {short_digest(event.digest)} -> {short_digest(event.detail)}"
            )
            return
        if event.kind == "prefetch-missing":
            note_missing(self.reporter, self.missing, event.detail)
            return
        if event.kind not in ("built", "reused", "skipped") or event.digest not in self.sizes:
            return
        self.layers[event.digest] = event
        size = human_size(self.sizes[event.digest])
        what = {"built": "zTOC built", "reused": "zTOC reused", "skipped": "skipped"}[event.kind]
        note = f": {event.detail}" if event.kind == "skipped" else f" -> {short_digest(event.ztoc)}"
        self.reporter.step(self.key, f"{what} for layer {short_digest(event.digest)} ({size}){note}")

    def summary(self) -> str:
        counts = {
            k: sum(1 for e in self.layers.values() if e.kind == k) for k in ("built", "reused", "skipped")
        }
        return ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no layer reported"


def describe_index(
    body: bytes,
    digest: str,
    image: PlatformImage,
    events: LayerEvents,
    sources: dict[str, str] | None = None,
    during_pull: Collection[str] = (),
    read_blob: Callable[[str], bytes] | None = None,
) -> PlatformIndex:
    """What a SOCI index manifest (``body``) covers of ``image``, with what soci said of each layer; its
    prefetch artifacts are read with ``read_blob``."""
    doc = json.loads(body)
    entries = [x for x in doc.get("layers", []) if x.get("mediaType") != SOCI_PREFETCH]
    ztocs = {x.get("annotations", {}).get(SOCI_LAYER_DIGEST_ANNOTATION): x.get("digest") for x in entries}
    out = PlatformIndex(str(image.platform), image.manifest.digest, digest, ztocs=len(entries))
    if read_blob is not None:
        out.prefetch = prefetch_artifacts(doc, read_blob)
    out.prefetch_not_found = list(events.missing)
    for layer in image.layers:
        target = out.layers_indexed if layer.digest in ztocs else out.layers_skipped
        target.append(LayerInfo(layer.digest, layer.size))
        event = events.layers.get(layer.digest)
        if layer.digest in ztocs:
            status = "reused" if event is not None and event.kind == "reused" else "built"
            source = (sources or {}).get(layer.digest) if status == "reused" else None
            early = status == "built" and layer.digest in during_pull
            out.layers.append(
                LayerReport(
                    layer.digest,
                    layer.size,
                    status,
                    ztoc=ztocs[layer.digest],
                    source=source,
                    during_pull=early,
                )
            )
        else:
            reason = event.detail if event is not None and event.detail else "under --min-layer-size"
            out.layers.append(LayerReport(layer.digest, layer.size, "skipped", reason=reason))
    return out


def prefetch_layers(doc: dict[str, Any]) -> dict[str, str]:
    """A SOCI index manifest's prefetch artifacts: layer digest -> artifact digest."""
    return {
        str((x.get("annotations") or {}).get(SOCI_LAYER_DIGEST_ANNOTATION)): str(x.get("digest"))
        for x in doc.get("layers", [])
        if x.get("mediaType") == SOCI_PREFETCH
    }


def prefetch_artifacts(doc: dict[str, Any], read_blob: Callable[[str], bytes]) -> list[PrefetchArtifact]:
    """The prefetch artifacts of SOCI index manifest ``doc``, each read with ``read_blob`` to count its spans."""
    out: list[PrefetchArtifact] = []
    for layer, digest in prefetch_layers(doc).items():
        ranges = json.loads(read_blob(digest)).get("prefetch_spans") or []
        spans = sum(int(r.get("end_span", 0)) - int(r.get("start_span", 0)) + 1 for r in ranges)
        out.append(PrefetchArtifact(digest, layer, spans=spans, ranges=len(ranges)))
    return out


class Stages:
    """Times each stage and tells the reporter when one starts."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = "", *, announce: bool = True) -> Iterator[None]:
        if announce:
            self.reporter.stage(name, detail)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)

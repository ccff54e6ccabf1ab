"""What a run is asked to do: the image and SOCI options, how to reach registries, where containerd and the
run's files come from. Frozen dataclasses, checked on construction (a UsageError names the bad option)."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wrapper.core.errors import UsageError
from wrapper.core.models import Platform
from wrapper.core.reference import Reference

SociVersion = Literal["V1", "V2"]
Overlap = Literal["auto", "always", "never"]

DEFAULT_MIN_LAYER_SIZE = 10 * 1024 * 1024  # soci's default
DEFAULT_CACHE_MAX_BYTES = 2 * 1024 * 1024 * 1024
# soci v0.15.0 (buildPrefetchLayer) decodes the layer's zTOC checkpoints once per listed file and keeps them until
# it exits: ~1.8 MB per file of a 67 MB layer (1,000 files: 1.7 GB peak, 2,000: 3.6 GB; benchmarks/README.md).
DEFAULT_PREFETCH_MAX_FILES = 1000
BIG_PREFETCH_FILE = 1 << 20  # a file this large covers spans of its own: kept whenever sizes are known


@dataclass(frozen=True)
class PullOptions:
    platforms: Sequence[Platform] = ()
    all_platforms: bool = False
    min_layer_size: int = DEFAULT_MIN_LAYER_SIZE
    full: bool = False
    max_concurrent_downloads: int = 4
    # Layers not to download although large enough (their zTOCs come from elsewhere: reuse).
    skip_layers: frozenset[str] = frozenset()
    # The largest layer downloads on its own before the other large layers (it can be indexed as soon as it is
    # in: see wrapper.soci.prebuild), rather than side by side with them; the small blobs still download beside it.
    largest_layer_first: bool = False
    # With largest_layer_first: a first stream faster than this (bytes/s) opens the other lanes as well. A pull
    # that fast gets no early builds (--overlap auto, wrapper.soci.prebuild), so nothing is worth waiting for.
    largest_alone_below: float | None = None

    def __post_init__(self) -> None:
        if self.platforms and self.all_platforms:
            raise UsageError("--platform and --all-platforms exclude each other", hint="pick one")
        if self.min_layer_size < 0:
            raise UsageError("--min-layer-size must be 0 or more")
        if self.max_concurrent_downloads < 1:
            raise UsageError("--max-concurrent-downloads must be at least 1")


@dataclass(frozen=True)
class ReuseOptions:
    """Where a run looks for zTOCs made before (``--no-reuse`` turns all of it off)."""

    enabled: bool = True
    search_repository: bool = True  # the SOCI indexes of other images of the same repository
    cache_dir: Path | None = None
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    reuse_from: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach and authenticate to registries."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    docker_config: Path | None = None
    ca_file: str | None = None
    plain_http: bool = False
    endpoint_overrides: tuple[tuple[str, str], ...] = ()
    read_timeout: float = 120.0  # seconds without a byte from the registry before a request is retried


@dataclass(frozen=True)
class DaemonOptions:
    """Where containerd comes from, and where this run keeps its files."""

    containerd_address: str | None = None  # attach to this socket instead of starting our own
    containerd_bin: str = "containerd"
    namespace: str = "soci-wrapper"
    work_dir: Path | None = None  # a run directory is made inside it
    keep_work_dir: bool = False


@dataclass(frozen=True)
class IndexRequest:
    reference: Reference
    soci_version: SociVersion = "V1"
    output_tag: str | None = None
    pull: PullOptions = field(default_factory=PullOptions)
    span_size: int | None = None
    force: bool = False
    soci_bin: str | None = None
    soci_timeout: float = 3600.0
    debug: bool = False
    reuse: ReuseOptions = field(default_factory=ReuseOptions)
    # Index each large layer as soon as it is downloaded (wrapper.soci.prebuild), not after the whole pull: "auto"
    # unless the pull is fast enough to keep the CPUs busy on its own.
    overlap: Overlap = "auto"
    # Files the snapshotter fetches before it mounts each layer (--prefetch-file, --prefetch-files-json): soci
    # adds a prefetch artifact per layer holding any of them. Empty: no prefetch artifacts.
    prefetch_files: tuple[str, ...] = ()
    # At most this many of them go to soci (--prefetch-max-files; 0: no cap): see cap_prefetch_list.
    prefetch_max_files: int = DEFAULT_PREFETCH_MAX_FILES

    def __post_init__(self) -> None:
        if self.prefetch_max_files < 0:
            raise UsageError("--prefetch-max-files must be 0 (no cap) or more")
        if self.soci_version == "V2" and not self.output_tag:
            raise UsageError(
                "--soci-version V2 needs --output-tag", hint="name the tag for the SOCI-enabled image"
            )
        if self.span_size is not None and self.span_size <= 0:
            raise UsageError("--span-size must be a positive number of bytes")


def prefetch_list(files: Sequence[str], json_file: Path | None) -> tuple[str, ...]:
    """The prefetch list of a run: ``--prefetch-file`` paths, then those of ``--prefetch-files-json`` (a JSON
    array of path strings, soci's format). Read now, before any network work: a missing or malformed file is
    a UsageError. Each path is stripped of surrounding blanks and empty ones are dropped, as soci does."""
    paths = list(files)
    if json_file is not None:
        try:
            doc = json.loads(json_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(
                f"cannot read --prefetch-files-json {json_file}: {exc.strerror or exc}",
                hint="pass a JSON file holding an array of file paths",
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"--prefetch-files-json {json_file} is not valid JSON ({exc})",
                hint='it must hold an array of file paths, e.g. ["/app/main.py", "/usr/lib/libssl.so.3"]',
            ) from None
        if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
            what = "an array with a non-string element" if isinstance(doc, list) else type(doc).__name__
            raise UsageError(
                f"--prefetch-files-json {json_file} holds {what}, not an array of file paths",
                hint='e.g. ["/app/main.py", "/usr/lib/libssl.so.3"]',
            )
        paths += doc
    return tuple(p.strip() for p in paths if p.strip())


def prefetch_path(path: str) -> str:
    """A listed path as soci matches it against a layer's files: cleaned, without a leading slash."""
    return posixpath.normpath("/" + path).lstrip("/")


def sample_prefetch(files: Sequence[str], limit: int, sizes: Mapping[str, int] | None = None) -> list[str]:
    """At most ``limit`` of ``files`` (0: all), in their order (first access first): every file of
    ``BIG_PREFETCH_FILE`` or more (``sizes``: path -> bytes, when known), then an even sample of the others.

    soci's prefetch artifacts name spans, not files: a large file covers spans of its own (so all of them are
    kept), small files read one after another share spans (so a sample keeps most of the spans the whole list
    names: 58 of 60 in the start-up benchmark, where an even sample alone kept 39)."""
    if limit <= 0 or len(files) <= limit:
        return list(files)
    known = sizes or {}
    big = [i for i, f in enumerate(files) if known.get(f, 0) >= BIG_PREFETCH_FILE]
    if len(big) >= limit:
        keep = set(big[:limit])
    else:
        small = [i for i, f in enumerate(files) if known.get(f, 0) < BIG_PREFETCH_FILE]
        room = limit - len(big)
        step = len(small) / room  # > 1: there are more small files than room
        keep = set(big) | {small[int(k * step)] for k in range(room)}
    return [f for i, f in enumerate(files) if i in keep]


@dataclass(frozen=True)
class CappedPrefetch:
    """The prefetch list soci is given (``files``) and what the cap left out of it."""

    files: tuple[str, ...]
    given_dropped: int = 0  # of --prefetch-file/--prefetch-files-json (only when they alone pass the cap)
    recorded_dropped: int = 0  # of the recorded files (--record-prefetch)

    @property
    def dropped(self) -> int:
        return self.given_dropped + self.recorded_dropped


def cap_prefetch_list(
    given: Sequence[str], recorded: Sequence[str], limit: int, sizes: Mapping[str, int] | None = None
) -> CappedPrefetch:
    """At most ``limit`` (0: no cap) of the files ``given`` then ``recorded`` (those not given already): the
    given ones first, whole while they fit (else an even sample of them, and none recorded), then the recorded
    ones chosen by ``sample_prefetch`` in the room left. soci needs ~1.8 MB of memory per listed file."""
    if limit <= 0 or len(given) + len(recorded) <= limit:
        return CappedPrefetch(tuple(given) + tuple(recorded))
    if len(given) >= limit:
        return CappedPrefetch(tuple(sample_prefetch(given, limit, sizes)), len(given) - limit, len(recorded))
    room = limit - len(given)
    return CappedPrefetch(
        tuple(given) + tuple(sample_prefetch(recorded, room, sizes)), 0, len(recorded) - room
    )

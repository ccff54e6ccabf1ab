"""What a run is asked to do: the image and SOCI options, how to reach registries, where containerd and the
run's files come from. Frozen dataclasses, checked on construction (a UsageError names the bad option)."""

from __future__ import annotations

from collections.abc import Sequence
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

    def __post_init__(self) -> None:
        if self.soci_version == "V2" and not self.output_tag:
            raise UsageError(
                "--soci-version V2 needs --output-tag", hint="name the tag for the SOCI-enabled image"
            )
        if self.span_size is not None and self.span_size <= 0:
            raise UsageError("--span-size must be a positive number of bytes")

"""What a run is asked to do: the image and SOCI options, how to reach registries, where containerd and the
run's files come from. Frozen dataclasses, checked on construction (a UsageError names the bad option)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wrapper.errors import UsageError
from wrapper.pull import PullOptions
from wrapper.registry.reference import Reference
from wrapper.reuse import ReuseOptions

SociVersion = Literal["V1", "V2"]
Overlap = Literal["auto", "always", "never"]


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
    # Index each large layer as soon as it is downloaded (wrapper.prebuild), not after the whole pull: "auto"
    # unless the pull is fast enough to keep the CPUs busy on its own.
    overlap: Overlap = "auto"

    def __post_init__(self) -> None:
        if self.soci_version == "V2" and not self.output_tag:
            raise UsageError(
                "--soci-version V2 needs --output-tag", hint="name the tag for the SOCI-enabled image"
            )
        if self.span_size is not None and self.span_size <= 0:
            raise UsageError("--span-size must be a positive number of bytes")

"""--overlap auto's decisions (wrapper.soci.prebuild, and the order of the pull): pure logic, no containerd or soci
needed."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from wrapper.containerd.client import ContainerdClient
from wrapper.core.models import Descriptor, Platform, PlatformImage, ResolvedImage
from wrapper.core.reference import Reference
from wrapper.image.pull import _LargestFirst
from wrapper.soci.prebuild import FAST_PULL_PER_CPU, Prebuilder, PullRate, fast_pull_rate
from wrapper.soci.runner import Soci

MIB = 1024 * 1024
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def test_the_rate_is_bytes_downloaded_over_time_since_the_pull_began() -> None:
    now = [100.0]
    rate = PullRate(clock=lambda: now[0])
    rate.add(64 * MIB)
    now[0] = 100.5
    rate.add(64 * MIB)
    assert rate.per_second() == 256 * MIB
    now[0] = 100.0  # no time at all: counted as 50 ms, not a division by zero
    assert rate.per_second() == 128 * MIB / 0.05


def test_the_fast_pull_rate_grows_with_the_cpus() -> None:
    assert fast_pull_rate(2) == 2 * FAST_PULL_PER_CPU == 128 * MIB
    assert fast_pull_rate(0) == FAST_PULL_PER_CPU
    assert fast_pull_rate() >= FAST_PULL_PER_CPU


def _image() -> ResolvedImage:
    config = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "c" * 64, 900)
    layers = [
        Descriptor(GZIP, "sha256:" + "a" * 64, 20 * MIB),
        Descriptor(GZIP, "sha256:" + "b" * 64, 30 * MIB),
    ]
    manifest = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "d" * 64, 700)
    platform = Platform("linux", "amd64")
    return ResolvedImage(
        reference=Reference("registry.example", "app", digest=manifest.digest),
        target=manifest,
        index_body=None,
        manifests=[(manifest, b"{}")],
        all_platforms=[platform],
        selected=[PlatformImage(platform, manifest, config, layers)],
    )


def test_a_pull_faster_than_the_rate_builds_nothing_early(tmp_path: Path) -> None:
    image = _image()
    early = Prebuilder(
        soci=cast(Soci, object()),  # never run: every layer is declined
        client=cast(ContainerdClient, object()),
        work=tmp_path,
        image=image,
        min_layer_size=10 * MIB,
        max_pull_rate=1.0,  # 1 byte/s: any pull is faster
    )
    try:
        early.downloaded(50 * MIB)  # counted as it arrives, not when a blob is stored
        early.stored(image.selected[0].config.digest)
        for layer in image.selected[0].layers:
            early.stored(layer.digest)
        assert early.pending == 0
        assert early.results() == {}
    finally:
        early.close()


@pytest.mark.parametrize(
    ("mib_per_s", "max_rate", "opened"),
    [
        (300, None, []),  # fast, early builds wanted (--overlap always): the largest stays alone
        (300, 128 * MIB, [3]),  # fast, no early builds will be made (--overlap auto): no reason to wait
        (100, 128 * MIB, []),  # between: the largest alone, its zTOC can start early
        (10, 128 * MIB, [3]),  # one stream is slow: several are faster
        (10, None, [3]),
    ],
)
def test_the_largest_layer_downloads_alone_only_when_that_pays(
    mib_per_s: int, max_rate: float | None, opened: list[int]
) -> None:
    now = [0.0]
    order = _LargestFirst([], lanes=4, max_rate=max_rate, clock=lambda: now[0])
    seen: list[int] = []
    order.open_lanes = seen.append
    order.advanced(1)
    now[0] = _LargestFirst.PROBE_SECONDS
    order.advanced(int(mib_per_s * MIB * _LargestFirst.PROBE_SECONDS))
    assert seen == opened

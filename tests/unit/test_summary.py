"""The summaries the commands print without --json (wrapper.cli.summary), on sample reports."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from wrapper.cli.summary import doctor_lines, print_batch, print_index, print_verify, pull_line
from wrapper.core.report import (
    IndexReport,
    LayerInfo,
    LayerReport,
    PlatformIndex,
    PlatformSkipped,
    PrefetchArtifact,
)
from wrapper.run.batch import BatchReport, ImageResult
from wrapper.run.doctor import Check as DoctorCheck
from wrapper.run.doctor import DoctorReport
from wrapper.soci.pullmodes import V1_NOTE
from wrapper.verify.report import LayerResult, PlatformResult, VerifyReport

IMAGE = "registry.example/app:1"
DIGEST = "sha256:" + "ab" * 32
INDEX = "sha256:" + "cd" * 32
BIG, MIDDLE, SMALL = ("sha256:" + c * 64 for c in "123")
MIB = 1 << 20


def rendered(draw: Callable[[Console, Console], None]) -> tuple[list[str], list[str]]:
    """What ``draw`` prints on stdout and on stderr, line by line, without trailing blanks."""
    streams = io.StringIO(), io.StringIO()
    out, err = (Console(file=f, width=160, no_color=True, highlight=False, soft_wrap=True) for f in streams)
    draw(out, err)
    stdout, stderr = ([line.rstrip() for line in f.getvalue().splitlines()] for f in streams)
    return stdout, stderr


def index_report(status: str = "indexed") -> IndexReport:
    return IndexReport(
        image=IMAGE,
        digest=DIGEST,
        soci_version="V1",
        status=status,  # type: ignore[arg-type]
        platforms=["linux/amd64", "linux/arm64"],
        indexes=[
            PlatformIndex(
                "linux/amd64",
                DIGEST,
                INDEX,
                ztocs=2,
                layers_indexed=[LayerInfo(BIG, 20 * MIB), LayerInfo(MIDDLE, 12 * MIB)],
                layers_skipped=[LayerInfo(SMALL, 1000)],
                layers=[
                    LayerReport(BIG, 20 * MIB, "built", ztoc=BIG),
                    LayerReport(MIDDLE, 12 * MIB, "reused", ztoc=MIDDLE, source="cache"),
                    LayerReport(SMALL, 1000, "skipped"),
                ],
                prefetch=[PrefetchArtifact("sha256:" + "ef" * 32, BIG, spans=3, ranges=2)],
            )
        ],
        not_indexed=[PlatformSkipped("linux/arm64", DIGEST, "every layer is under --min-layer-size")],
        pushed_tag="app-soci",
        stages={"pull": 1.25, "index": 2.5},
        push={"attempts": 2},
        work_dir="/tmp/run",
    )


def test_index_summary() -> None:
    out, err = rendered(lambda out, err: print_index(out, err, index_report()))
    assert err == []
    assert out == [
        "SOCI index",
        f" image                 {IMAGE}",
        f" digest                {DIGEST}",
        " status                indexed",
        " SOCI version          V1",
        " platforms             linux/amd64, linux/arm64",
        f" index linux/amd64     {INDEX}",
        "                       2 zTOCs; 2 layers indexed (32.0 MiB), 1 of them reused, 1 skipped (1000 B)",
        "                       prefetch: 1 artifact (3 spans)",
        " no index linux/arm64  every layer is under --min-layer-size",
        " push                  2 attempts (transient registry errors retried)",
        " pushed tag            app-soci (unchanged)",
        " time                  pull 1.2s, index 2.5s",
        " work dir              /tmp/run",
    ]


def test_index_summary_of_an_oci_layout_names_it() -> None:
    out, _ = rendered(lambda out, err: print_index(out, err, index_report(), source=Path("/tmp/app.tar")))
    assert out[2:5] == [
        f" digest                {DIGEST}",
        " from                  /tmp/app.tar",
        " status                indexed",
    ]


def test_index_summary_when_there_was_nothing_to_do() -> None:
    out, err = rendered(lambda out, err: print_index(out, err, index_report("already-indexed")))
    assert err == [f"already indexed: {IMAGE} ({DIGEST}); nothing to do (use --force to rebuild)"]
    assert " status                already-indexed" in out
    report = index_report("not-an-image")
    report.reason = "it is a SOCI index"
    out, err = rendered(lambda out, err: print_index(out, err, report))
    assert (out, err) == ([], [f"{IMAGE} is not an image to index (it is a SOCI index); nothing to do"])


def test_many_images_summary() -> None:
    batch = BatchReport(
        [ImageResult(IMAGE, 0, index_report()), ImageResult("registry.example/gone:1", 4, None, "not found")],
        seconds=12.34,
    )
    out, _ = rendered(lambda out, err: print_batch(out, batch))
    assert out == [
        "SOCI indexes: 2 images",
        " image                    result           SOCI index digests",
        f" {IMAGE}   indexed          linux/amd64 {INDEX}",
        " registry.example/gone:1  failed (exit 4)  not found",
        "1 of 2 images done in 12.3 s",
    ]


def test_verify_summary() -> None:
    layer = LayerResult(
        BIG, 20 * MIB, "application/vnd.oci.image.layer.v1.tar+gzip", ztoc=MIDDLE, files_compared=3
    )
    layer.add("registry", "ztoc blob", True, "present")
    layer.add("content", "get-file", False, "file data/a differs")
    small = LayerResult(SMALL, 1000, "application/vnd.oci.image.layer.v1.tar+gzip", covered_reason="small")
    platform = PlatformResult(
        "linux/amd64",
        DIGEST,
        soci_version="V1",
        index_digest=INDEX,
        discovered_via="referrers API",
        layers=[layer, small],
    )
    report = VerifyReport(
        IMAGE,
        DIGEST,
        "auto",
        levels={"registry": "run", "content": "run"},
        platforms=[platform],
        stages={"registry": 0.5},
    )
    out, _ = rendered(lambda out, err: print_verify(out, report))
    assert out == [
        "SOCI index verification",
        f" image           {IMAGE}",
        f" digest          {DIGEST}",
        " status          invalid",
        " registry level  run",
        " content level   run",
        " time            registry 0.5s",
        f"linux/amd64: SOCI index V1 {INDEX} (found through the referrers API)",
        "layer         size      zTOC          registry  content  consumer  notes",
        "111111111111  20.0 MiB  222222222222  ok        FAILED   -         3 files compared; failed: get-file",
        "333333333333  1000 B    -             -         -        -         small",
        "problems:",
        f"  - linux/amd64: layer {BIG}: file data/a differs",
        "warnings:",  # a V1 index the consumer level did not pull: the snapshotter's documented default
        f"  - linux/amd64: {V1_NOTE} (not seen here: the consumer level did not pull this platform)",
        f"invalid SOCI index: linux/amd64: layer {BIG}: file data/a differs",
    ]


def test_pull_and_doctor_lines() -> None:
    summary: dict[str, object] = {
        "image": IMAGE,
        "digest": DIGEST,
        "platforms": ["linux/amd64"],
        "blobs_fetched": {"count": 3, "bytes": 3 * MIB},
        "blobs_skipped": {"count": 1, "bytes": 1000},
        "blobs_present": {"count": 2, "bytes": 10},
        "seconds": 1.5,
    }
    assert pull_line(summary) == (
        f"pulled {IMAGE} ({DIGEST}) for linux/amd64: 3 blobs fetched (3.0 MiB), 1 skipped (1000 B), "
        "2 already present, in 1.5 s"
    )
    report = DoctorReport(
        "1.0",
        "3.11",
        "linux",
        True,
        checks=[
            DoctorCheck("containerd", True, True, "containerd 2.2.6"),
            DoctorCheck("soci", False, True, "not found", fix="run scripts/bootstrap.sh"),
            DoctorCheck("fuse", False, False, "no /dev/fuse"),
        ],
    )
    assert doctor_lines(report) == [
        "ok   containerd: containerd 2.2.6",
        "FAIL soci: not found",
        "     fix: run scripts/bootstrap.sh",
        "warn fuse: no /dev/fuse",
    ]

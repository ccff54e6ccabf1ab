"""The prefetch list's pure logic: reading ``--prefetch-files-json``, paths as soci matches them, soci's
prefetch lines as events, and what the report makes of an index holding prefetch artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.core.errors import UsageError
from wrapper.core.models import SOCI_LAYER_DIGEST_ANNOTATION, Descriptor, Platform, PlatformImage
from wrapper.core.options import (
    IndexRequest,
    cap_prefetch_list,
    prefetch_list,
    prefetch_path,
    sample_prefetch,
)
from wrapper.core.progress import QuietReporter
from wrapper.core.reference import Reference
from wrapper.core.report import SOCI_PREFETCH, LayerEvents, PlatformIndex, PrefetchArtifact, describe_index
from wrapper.soci.runner import parse_event

LAYER = "sha256:" + "a" * 64
ARTIFACT = "sha256:" + "b" * 64
ZTOC = "sha256:" + "c" * 64


def test_the_list_is_the_flags_then_the_json_file_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps(["/app/main.py", "  /usr/lib/x.so ", "", "   "]))
    assert prefetch_list(["/etc/app.conf", " "], path) == ("/etc/app.conf", "/app/main.py", "/usr/lib/x.so")
    assert prefetch_list([], None) == ()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read --prefetch-files-json"),
        ("[", "is not valid JSON"),
        (b"\xff\xfe[]", "is not valid JSON"),
        ('"/app/main.py"', "holds str, not an array of file paths"),
        ("[1]", "holds an array with a non-string element"),
    ],
)
def test_a_bad_json_file_is_a_usage_error(tmp_path: Path, content: str | bytes | None, words: str) -> None:
    path = tmp_path / "list.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as caught:
        prefetch_list([], path)
    assert words in caught.value.message and str(path) in caught.value.message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("given", "matched"),
    [
        ("/usr/lib/x.so", "usr/lib/x.so"),
        ("usr//lib/./x.so", "usr/lib/x.so"),
        ("//app/../etc/conf", "etc/conf"),
        ("app/dir/", "app/dir"),
        ("/", ""),
    ],
)
def test_paths_are_cleaned_as_soci_cleans_them(given: str, matched: str) -> None:
    assert prefetch_path(given) == matched


def test_soci_prefetch_lines_are_events() -> None:
    made = parse_event(f"Created prefetch artifact for layer {LAYER}: {ARTIFACT}\n")
    assert made is not None and (made.kind, made.digest, made.detail) == ("prefetch", LAYER, ARTIFACT)
    line = 'time="2026-01-01T00:00:00Z" level=warning msg="prefetch file app/a \\"b\\".txt not found in any layer"'
    missing = parse_event(line)
    assert missing is not None and (missing.kind, missing.detail) == ("prefetch-missing", 'app/a "b".txt')
    assert parse_event('time="x" level=info msg="prefetch file a not found in any layer"') is None


def platform_image() -> PlatformImage:
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", LAYER, 20 << 20)
    manifest = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "d" * 64, 500)
    config = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "e" * 64, 300)
    return PlatformImage(Platform("linux", "amd64"), manifest, config, [layer])


def test_an_index_with_prefetch_artifacts_is_described_apart_from_its_ztocs() -> None:
    image = platform_image()
    index = {
        "layers": [
            {"mediaType": "application/octet-stream", "digest": ZTOC, "size": 9,
             "annotations": {SOCI_LAYER_DIGEST_ANNOTATION: LAYER}},
            {"mediaType": SOCI_PREFETCH, "digest": ARTIFACT, "size": 66,
             "annotations": {SOCI_LAYER_DIGEST_ANNOTATION: LAYER}},
        ]
    }  # fmt: skip
    artifact = {
        "version": "1.0",
        "prefetch_spans": [{"start_span": 0, "end_span": 2}, {"start_span": 5, "end_span": 5}],
    }
    events = LayerEvents(QuietReporter(), "create", image)
    events(parse_event(f"layer {LAYER} -> ztoc {ZTOC}") or pytest.fail("no event"))
    events(
        parse_event('level=warning msg="prefetch file x not found in any layer"') or pytest.fail("no event")
    )
    blobs = {ARTIFACT: json.dumps(artifact).encode()}
    out = describe_index(
        json.dumps(index).encode(), "sha256:" + "f" * 64, image, events, read_blob=blobs.__getitem__
    )
    assert out.ztocs == 1
    assert [x.ztoc for x in out.layers] == [ZTOC]
    assert out.prefetch == [PrefetchArtifact(ARTIFACT, LAYER, spans=4, ranges=2)]
    assert out.prefetch_not_found == ["x"]


def test_the_summary_line() -> None:
    idx = PlatformIndex("linux/amd64", "m", "i")
    assert idx.prefetch_summary() is None
    idx.prefetch = [PrefetchArtifact(ARTIFACT, LAYER, spans=4, ranges=2)]
    assert idx.prefetch_summary() == "prefetch: 1 artifact (4 spans)"
    idx.prefetch_not_found = ["a", "b", "c", "d"]
    assert idx.prefetch_summary() == (
        "prefetch: 1 artifact (4 spans); 4 listed files in no indexed layer: a, b, c and 1 more"
    )


def test_a_sample_keeps_the_large_files_and_spreads_over_the_rest_in_order() -> None:
    files = [f"/f{i}" for i in range(10)]
    assert sample_prefetch(files, 20) == files
    assert sample_prefetch(files, 0) == files  # 0: no cap
    assert sample_prefetch(files, 5) == ["/f0", "/f2", "/f4", "/f6", "/f8"]
    sizes = {"/f3": 5 << 20, "/f9": 1 << 20, "/f1": 1000}
    assert sample_prefetch(files, 4, sizes) == ["/f0", "/f3", "/f5", "/f9"]
    assert sample_prefetch(files, 1, sizes) == ["/f3"]  # more large files than room: the first ones
    # a list with a path twice still gives exactly the cap
    assert len(sample_prefetch(["/a", "/a", "/b", "/c"], 3)) == 3


def test_the_cap_keeps_the_given_files_then_a_sample_of_the_recorded() -> None:
    given = ("/app/main", "/etc/app.conf")
    recorded = [f"/r{i}" for i in range(8)]
    whole = cap_prefetch_list(given, recorded, 10)
    assert whole.files == (*given, *recorded) and whole.dropped == 0
    assert cap_prefetch_list(given, recorded, 0).files == (*given, *recorded)  # 0: no cap
    capped = cap_prefetch_list(given, recorded, 6)
    assert capped.files == (*given, "/r0", "/r2", "/r4", "/r6")
    assert (capped.given_dropped, capped.recorded_dropped, capped.dropped) == (0, 4, 4)
    sized = cap_prefetch_list(given, recorded, 4, {"/r7": 2 << 20})
    assert sized.files == (*given, "/r0", "/r7")


def test_given_files_alone_over_the_cap_are_sampled_and_no_recorded_kept() -> None:
    given = [f"/g{i}" for i in range(6)]
    capped = cap_prefetch_list(given, ["/r0"], 3)
    assert capped.files == ("/g0", "/g2", "/g4")
    assert (capped.given_dropped, capped.recorded_dropped) == (3, 1)


def test_a_negative_cap_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--prefetch-max-files must be 0"):
        IndexRequest(Reference.parse("registry.example/app:1"), prefetch_max_files=-1)

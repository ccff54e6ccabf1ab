"""``index --record-prefetch``'s pure parts: the merged prefetch list, the platform a recording starts, the
recorder made from the command line, what the report says, and the snapshotter log lines that tell which
prefetch artifacts it loaded."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from wrapper.cli.arguments import build_parser
from wrapper.cli.startup import prefetch_recorder, split_container_command
from wrapper.core.errors import UsageError
from wrapper.core.models import Descriptor, Platform, PlatformImage, ResolvedImage
from wrapper.core.options import IndexRequest
from wrapper.core.progress import QuietReporter
from wrapper.core.reference import Reference
from wrapper.core.report import IndexReport, RecordedPrefetch
from wrapper.run.recording import capped_request, merged_list, recording_platform
from wrapper.startup.lazy import prefetch_loaded
from wrapper.startup.report import PrefetchLoaded

DIGEST = "sha256:" + "a" * 64
LAYER_A, LAYER_B = "sha256:" + "1" * 64, "sha256:" + "2" * 64
ARTIFACT_A, ARTIFACT_B = "sha256:" + "3" * 64, "sha256:" + "4" * 64


def test_given_files_come_first_and_recorded_ones_are_added_once_as_soci_matches_them() -> None:
    given = ("/app/main.py", "lib/x.so")
    recorded = ["/lib/x.so", "/app//main.py", "/bin/sh", "/bin/sh", "/etc/./passwd"]
    assert merged_list(given, recorded) == ("/app/main.py", "lib/x.so", "/bin/sh", "/etc/./passwd")
    assert merged_list((), ["/a", "/a"]) == ("/a",)
    assert merged_list(("/a",), []) == ("/a",)


def _image(*platforms: Platform) -> ResolvedImage:
    descriptor = Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 1)
    selected = [PlatformImage(p, descriptor, descriptor, []) for p in platforms]
    return ResolvedImage(
        Reference.parse("reg.example/app:1"), descriptor, None, [], list(platforms), selected
    )


class _Lines(QuietReporter):
    """Progress lines, kept (a plain run shows them; --quiet's reporter does not)."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def test_a_list_over_the_cap_keeps_the_given_files_first_and_says_so() -> None:
    request = IndexRequest(Reference.parse("reg.example/app:1"), prefetch_files=("/g",), prefetch_max_files=3)
    recorded = merged_list(request.prefetch_files, ["/r0", "/r1", "/r2", "/r3"])
    report = IndexReport("reg/app:1", DIGEST, "V2", "indexed", ["linux/amd64"])
    reporter = _Lines()
    capped = capped_request(request, report, reporter, recorded)
    assert capped.prefetch_files == ("/g", "/r0", "/r2")
    assert (report.prefetch_files, report.prefetch_files_dropped) == (3, 2)
    assert report.to_json()["prefetch_files_dropped"] == 2
    assert (
        len(report.warnings) == 1
        and "5 files, more than --prefetch-max-files 3: 2 left out" in report.warnings[0]
    )
    assert "1.8 MB of memory per listed file" in report.warnings[0]
    assert reporter.lines == [f"warning: {report.warnings[0]}"]
    # under the cap: the list as it is, no warning
    under = IndexReport("reg/app:1", DIGEST, "V2", "indexed", ["linux/amd64"])
    assert capped_request(request, under, _Lines()).prefetch_files == ("/g",)
    assert (under.prefetch_files, under.prefetch_files_dropped, under.warnings) == (1, 0, [])
    # --quiet: nothing on stderr, the warning still in the report
    stream = io.StringIO()
    quiet = IndexReport("reg/app:1", DIGEST, "V2", "indexed", ["linux/amd64"])
    capped_request(request, quiet, QuietReporter(stream), recorded)
    assert stream.getvalue() == "" and quiet.warnings == report.warnings


def test_the_recording_starts_this_machines_platform_or_says_why_it_cannot() -> None:
    host = Platform.host()
    other = Platform("linux", "s390x")
    assert recording_platform(_image(other, host)).platform == host
    with pytest.raises(UsageError) as caught:
        recording_platform(_image(other))
    assert f"starts the image on this machine ({host})" in caught.value.message
    assert "linux/s390x" in caught.value.message and "--prefetch-files-json" in (caught.value.hint or "")


def parse(*argv: str) -> argparse.Namespace:
    ours, command = split_container_command(["index", *argv])
    args = build_parser().parse_args(ours)
    args.container_command = command
    return args


def test_the_recorder_has_the_container_flags_and_startups_defaults() -> None:
    assert prefetch_recorder(parse("reg/app:1")) is None
    recorder = prefetch_recorder(parse("reg/app:1", "--record-prefetch"))
    assert recorder is not None and recorder.command is None and recorder.env == ()
    assert recorder.readiness.mode == "exit" and recorder.readiness.timeout == 120.0
    assert recorder.limits.memory_bytes == 1 << 30 and recorder.limits.pids == 1024
    recorder = prefetch_recorder(
        parse(
            "reg/app:1", "--record-prefetch", "--ready-port", "8080", "--timeout", "30", "--env", "A=1",
            "--memory", "512MiB", "--pids", "50", "--containerd-bin", "/opt/containerd", "--namespace", "ci",
            "--", "/app", "--serve",
        )
    )  # fmt: skip
    assert recorder is not None and recorder.command == ("/app", "--serve") and recorder.env == ("A=1",)
    assert recorder.readiness.mode == "port" and recorder.readiness.port == 8080
    assert recorder.readiness.timeout == 30 and recorder.limits.memory_bytes == 512 << 20
    assert recorder.limits.pids == 50 and recorder.containerd_bin == "/opt/containerd"
    assert recorder.namespace == "ci"
    request = recorder.startup_request(Reference.parse("reg.example/app@" + DIGEST), Platform.host(), None)
    assert not request.lazy and not request.baseline and request.command == ("/app", "--serve")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--ready-port", "80"], "--ready-port"),
        (["--env", "A=1"], "--env"),
        (["--memory", "1GiB"], "--memory"),
        (["--pids", "5"], "--pids"),
        (["--", "/app"], "-- CMD"),
    ],
)
def test_a_container_flag_without_record_prefetch_is_a_usage_error(argv: list[str], flag: str) -> None:
    with pytest.raises(UsageError) as caught:
        prefetch_recorder(parse("reg/app:1", *argv))
    assert caught.value.message.startswith(f"{flag} is for the recorded start")


def test_the_report_says_what_was_recorded() -> None:
    report = IndexReport("reg/app:1", DIGEST, "V2", "indexed", ["linux/amd64"])
    assert report.to_json()["recorded"] is None
    report.recorded = RecordedPrefetch(
        files=["/bin/sh", "/app/a"], seconds=1.5, platform="linux/amd64", image="reg/app@" + DIGEST,
        args=["/bin/sh", "-c", "x"], readiness="it exits with status 0", pull_seconds=1.0, ready_seconds=0.2,
    )  # fmt: skip
    recorded = json.loads(json.dumps(report.to_json()))["recorded"]
    assert (
        recorded["files"] == ["/bin/sh", "/app/a"] and recorded["count"] == 2 and recorded["seconds"] == 1.5
    )
    assert recorded["how"] == "from a full pull through overlayfs"


def test_the_snapshotters_log_tells_which_prefetch_artifacts_it_loaded() -> None:
    src = "127.0.0.1:5000/app:soci/"
    entries = [
        {"msg": "resolving", "src": src + LAYER_A},
        {"msg": f"Loading prefetch artifact {ARTIFACT_A}", "src": src + LAYER_A, "mountpoint": "/m/1"},
        {"msg": f"Loading prefetch artifact {ARTIFACT_B}", "src": src + LAYER_B},
        {"msg": "Successfully loaded prefetch artifact with 3 span ranges", "src": src + LAYER_B},
        {"msg": "resolved layer", "src": src + LAYER_B},
        {"msg": "Prefetch is disabled in config, skipping prefetch", "src": src + LAYER_A},
        {"level": "info"},
    ]
    assert prefetch_loaded(entries) == [
        PrefetchLoaded(LAYER_A, ARTIFACT_A, None),
        PrefetchLoaded(LAYER_B, ARTIFACT_B, 3),
    ]
    assert prefetch_loaded([]) == []

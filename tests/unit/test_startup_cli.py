"""``startup``'s command line: the container's command after ``--``, and the request built from the flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from wrapper.cli.arguments import build_parser
from wrapper.cli.startup import split_container_command, startup_request
from wrapper.core.errors import UsageError
from wrapper.core.models import Platform


def parse(*argv: str) -> argparse.Namespace:
    ours, command = split_container_command(["startup", *argv])
    args = build_parser().parse_args(ours)
    args.container_command = command
    return args


def test_everything_after_the_first_dashes_is_the_containers_command() -> None:
    assert split_container_command(["startup", "img", "--", "sh", "-c", "x --json", "--"]) == (
        ["startup", "img"],
        ["sh", "-c", "x --json", "--"],
    )
    assert split_container_command(["startup", "img", "--json"]) == (["startup", "img", "--json"], None)
    # index --record-prefetch takes the recorded start's command the same way; other commands do not
    assert split_container_command(["index", "img", "--", "x"]) == (["index", "img"], ["x"])
    assert split_container_command(["pull", "img", "--", "x"]) == (["pull", "img", "--", "x"], None)
    args = parse("--json", "reg/app:1", "--env", "A=1", "--", "/bin/app", "--json", "--env")
    assert args.json and args.env == ["A=1"] and args.container_command == ["/bin/app", "--json", "--env"]


def test_the_request_has_the_flags_and_the_defaults() -> None:
    request = startup_request(parse("reg/app:1"))
    assert str(request.reference) == "docker.io/reg/app:1" and request.command is None
    assert request.lazy and not request.baseline and request.record is None
    assert request.readiness.mode == "exit" and request.readiness.timeout == 120.0
    assert request.limits.memory_bytes == 1 << 30 and request.limits.pids == 1024
    request = startup_request(
        parse(
            "reg/app:1", "--baseline", "--record", "out.json", "--ready-log", "listening on [0-9]+",
            "--timeout", "5", "--env", "A=1", "--memory", "256MiB", "--pids", "64", "--platform", "linux/arm64",
            "--containerd-bin", "/opt/containerd", "--snapshotter-bin", "/opt/snap", "--", "/app", "-v",
        )
    )  # fmt: skip
    assert request.baseline and request.record == Path("out.json") and request.command == ("/app", "-v")
    assert request.readiness.mode == "log" and request.readiness.pattern is not None
    assert request.readiness.pattern.search("now listening on 8080") and request.readiness.timeout == 5
    assert request.env == ("A=1",) and request.limits.memory_bytes == 256 << 20 and request.limits.pids == 64
    assert request.platform == Platform("linux", "arm64")
    assert request.containerd_bin == "/opt/containerd" and request.snapshotter_bin == "/opt/snap"
    port = startup_request(parse("reg/app:1", "--ready-port", "8080", "--no-lazy"))
    assert port.readiness.mode == "port" and port.readiness.port == 8080 and not port.lazy


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ready-log", "a", "--ready-port", "1"], "exclude each other"),
        (["--ready-log", "[unclosed"], "not a valid regular expression"),
        (["--ready-port", "0"], "is not a TCP port"),
        (["--env", "=x"], "is not KEY=VALUE"),
        (["--pids", "0"], "--pids must be at least 1"),
        (["--no-lazy", "--baseline"], "--baseline adds nothing"),
        (["--containerd-address", "/run/c.sock"], "not supported"),
        (["--"], "nothing after --"),
    ],
)
def test_bad_combinations_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        startup_request(parse("reg/app:1", *argv))

"""The command line: parsing, the seed form, environment variables, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from tests.helpers import run_cli
from wrapper.cli.arguments import build_parser
from wrapper.cli.main import _normalise_argv, _Plain
from wrapper.cli.requests import ImageArguments, index_reference, resolve_image, verify_request
from wrapper.cli.values import parse_size
from wrapper.core.errors import ExitCode, UsageError
from wrapper.core.models import Platform
from wrapper.core.reference import Reference

DIGEST = "sha256:" + "ab" * 32
ECR_VARIABLES = (
    "SOCI_WRAPPER_IMAGE",
    "SOCI_WRAPPER_REPO",
    "SOCI_WRAPPER_DIGEST",
    "SOCI_WRAPPER_TAG",
    "SOCI_WRAPPER_REGION",
    "SOCI_WRAPPER_ACCOUNT",
    "SOCI_WRAPPER_PLATFORMS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCOUNT_ID",
)


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(_normalise_argv(list(args)))


def test_parse_size_units() -> None:
    assert parse_size("10MiB") == 10 << 20
    assert parse_size("4194304") == 4194304
    assert parse_size("1g") == 1 << 30
    assert parse_size("512 KiB") == 512 << 10
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("ten megs")


def test_seed_form_maps_to_ecr_reference() -> None:
    args = parse(
        "--repo", "team/app", "--digest", DIGEST, "--region", "eu-west-1", "--account", "123456789012"
    )
    assert args.command == "index"
    ref = index_reference(args)
    assert str(ref) == f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@{DIGEST}"


def test_seed_form_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCI_WRAPPER_REPO", "app")
    monkeypatch.setenv("SOCI_WRAPPER_DIGEST", DIGEST)
    monkeypatch.setenv("AWS_REGION", "cn-north-1")
    monkeypatch.setenv("SOCI_WRAPPER_ACCOUNT", "123456789012")
    ref = index_reference(parse())
    assert ref.registry == "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
    # flags win over the environment
    ref = index_reference(parse("--region", "us-east-2"))
    assert ref.registry == "123456789012.dkr.ecr.us-east-2.amazonaws.com"


@pytest.mark.parametrize(
    "args",
    [
        ("--repo", "app", "--digest", DIGEST, "--account", "123456789012"),  # no region
        ("--repo", "app", "--region", "eu-west-1", "--account", "123456789012"),  # no digest
        ("index", "registry.example/app:1", "--repo", "app"),
        ("index",),
    ],
)
def test_incomplete_input_is_a_usage_error(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCOUNT_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError):
        index_reference(parse(*args))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--repo", "app", "--digest", "sha256:123", "--region", "eu-west-1", "--account", "123456789012"],
            "digest",
        ),
        (["--repo", "app", "--digest", DIGEST, "--region", "eu-west-1", "--account", "12345"], "account"),
        (
            [
                "--repo",
                "app",
                "--digest",
                DIGEST,
                "--region",
                "eu-west-1",
                "--account",
                "123456789012",
                "--soci-version",
                "V2",
            ],
            "--output-tag",
        ),
        (["index", "Not A Reference"], "reference"),
        (["index", "registry.example/app:1", "--username", "u"], "--password-stdin"),
        (["index", "registry.example/app:1", "--bogus-flag"], "bogus"),
        (["index", "registry.example/app:1", "--platform", "linux"], "platform"),
        (["index", "registry.example/app:1", "--min-layer-size", "lots"], "size"),
        (["pull", "registry.example/app:1", "--platform", "linux/amd64", "--all-platforms"], "exclude"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli(*args, env={"AWS_REGION": "", "AWS_DEFAULT_REGION": ""})
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle.lower() in lines[0].lower()
    assert proc.stdout == ""


def test_json_error_object_on_stdout() -> None:
    proc = run_cli("index", "registry.example/app:1", "--username", "u", "--json")
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    report = json.loads(proc.stdout)  # one JSON object and nothing else on stdout
    assert isinstance(report, dict) and set(report) == {"error", "exit_code"}, report
    assert report["exit_code"] == ExitCode.USAGE and type(report["exit_code"]) is int
    assert isinstance(report["error"], str) and "--password-stdin" in report["error"]
    assert "\n" not in report["error"]
    # the same message as the one error line on stderr
    assert proc.stderr.strip().splitlines() == [f"soci-wrapper: error: {report['error']}"]


def test_help_documents_exit_codes_and_environment() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for text in ("exit codes:", "SOCI_WRAPPER_REPO", "--repo", "index", "pull", "doctor"):
        assert text in proc.stdout
    proc = run_cli("index", "--help")
    for text in (
        "--soci-version",
        "--output-tag",
        "--platform",
        "--all-platforms",
        "--span-size",
        "--min-layer-size",
        "--force",
        "--containerd-address",
        "--namespace",
        "--soci-bin",
        "--work-dir",
        "--keep-work-dir",
        "--username",
        "--password-stdin",
        "--json",
        "--quiet",
        "--debug",
    ):
        assert text in proc.stdout, text


def test_log_records_print_as_the_tools_own_warnings() -> None:
    args = ("a.example", 0.5)
    record = logging.LogRecord(
        "wrapper.registry", logging.WARNING, __file__, 1, "503 from %s; retrying in %.1f s", args, None
    )
    assert _Plain().format(record) == "warning: 503 from a.example; retrying in 0.5 s"


# -- one resolution of the image for every command ----------------------------------------------------------
@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ECR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


ECR_IMAGE = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@{DIGEST}"


@pytest.mark.parametrize(
    ("flags", "environment", "expected"),
    [
        # the case: verify read only AWS_REGION and AWS_ACCOUNT_ID
        (
            ["--repo", "team/app", "--digest", DIGEST],
            {"SOCI_WRAPPER_REGION": "eu-west-1", "SOCI_WRAPPER_ACCOUNT": "123456789012"},
            ECR_IMAGE,
        ),
        (
            ["--repo", "team/app", "--digest", DIGEST],
            {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCOUNT_ID": "123456789012"},
            ECR_IMAGE,
        ),
        (
            [],
            {
                "SOCI_WRAPPER_REPO": "team/app",
                "SOCI_WRAPPER_TAG": "1.4",
                "SOCI_WRAPPER_REGION": "cn-north-1",
                "AWS_REGION": "eu-west-1",  # SOCI_WRAPPER_REGION comes first
                "SOCI_WRAPPER_ACCOUNT": "123456789012",
            },
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/team/app:1.4",
        ),
        (
            ["--region", "us-east-2"],  # a flag wins over the environment
            {
                "SOCI_WRAPPER_REPO": "team/app",
                "SOCI_WRAPPER_DIGEST": DIGEST,
                "SOCI_WRAPPER_REGION": "eu-west-1",
                "SOCI_WRAPPER_ACCOUNT": "123456789012",
            },
            f"123456789012.dkr.ecr.us-east-2.amazonaws.com/team/app@{DIGEST}",
        ),
        ([], {"SOCI_WRAPPER_IMAGE": "registry.example/app:1"}, "registry.example/app:1"),
    ],
)
def test_verify_resolves_the_image_index_resolves(
    flags: list[str], environment: dict[str, str], expected: str, clean_environment: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        clean_environment.setenv(name, value)
    indexed = index_reference(parse("index", *flags))
    verified = verify_request(parse("verify", *flags)).reference
    assert str(indexed) == str(verified) == expected
    assert indexed == verified


@pytest.mark.parametrize(
    ("flags", "environment", "message"),
    [
        (["--repo", "app", "--digest", DIGEST], {"SOCI_WRAPPER_ACCOUNT": "123456789012"}, "--region"),
        (["--repo", "app", "--digest", DIGEST], {"SOCI_WRAPPER_REGION": "eu-west-1"}, "--account"),
        (
            ["--repo", "app"],
            {"SOCI_WRAPPER_REGION": "eu-west-1", "SOCI_WRAPPER_ACCOUNT": "1" * 12},
            "--digest",
        ),
        (["registry.example/app:1"], {"SOCI_WRAPPER_REPO": "app"}, "either IMAGE_REF or --repo"),
        (["registry.example/app:1"], {"SOCI_WRAPPER_DIGEST": DIGEST}, "go with --repo"),
        ([], {}, "no image given"),
    ],
)
def test_verify_and_index_refuse_the_same_incomplete_image(
    flags: list[str], environment: dict[str, str], message: str, clean_environment: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        clean_environment.setenv(name, value)
    with pytest.raises(UsageError) as from_index:
        index_reference(parse("index", *flags))
    with pytest.raises(UsageError) as from_verify:
        verify_request(parse("verify", *flags))
    assert str(from_index.value) == str(from_verify.value)
    assert message in str(from_verify.value)


def test_resolve_image_reads_the_given_environment() -> None:
    """The resolution itself, with the environment passed in: flags first, then SOCI_WRAPPER_*, then AWS_*."""
    environ = {
        "SOCI_WRAPPER_REGION": "eu-west-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCOUNT_ID": "123456789012",
        "SOCI_WRAPPER_ACCOUNT": "",  # empty is unset
    }
    ref = resolve_image(ImageArguments(repo="team/app", digest=DIGEST), environ)
    assert ref == Reference.ecr("123456789012", "eu-west-1", "team/app", digest=DIGEST)
    ref = resolve_image(ImageArguments(repo="team/app", tag="v1", region="eu-west-3"), environ)
    assert str(ref) == "123456789012.dkr.ecr.eu-west-3.amazonaws.com/team/app:v1"
    with pytest.raises(UsageError, match="--account"):
        resolve_image(ImageArguments(repo="team/app", digest=DIGEST), {"AWS_REGION": "eu-west-1"})


def test_verify_reads_platforms_from_the_environment(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("SOCI_WRAPPER_PLATFORMS", "linux/arm64/v8, linux/amd64")
    request = verify_request(parse("verify", "registry.example/app:1"))
    assert request.platforms == (Platform("linux", "arm64", "v8"), Platform("linux", "amd64"))
    assert not request.all_platforms
    assert verify_request(
        parse("verify", "registry.example/app:1", "--platform", "linux/s390x")
    ).platforms == (Platform("linux", "s390x"),)
    clean_environment.setenv("SOCI_WRAPPER_PLATFORMS", "all")
    request = verify_request(parse("verify", "registry.example/app:1"))
    assert request.all_platforms and request.platforms == ()

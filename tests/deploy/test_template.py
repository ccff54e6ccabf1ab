"""deploy/'s CloudFormation template: cfn-lint passes, and recorded-shape ECR push events go through the two
rules' event patterns and the build target's input transformer, as the template declares them, into
soci-wrapper's own environment handling, which must index ``ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO@DIGEST``.
soci-wrapper's own pushes (SOCI index manifests, referrers tags, the V2 output tag) must match no rule."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from tests.deploy.cfn import PSEUDO, Stack, load_template
from tests.deploy.eventbridge import matches, transform, wildcard_regex
from wrapper.cli import main as cli
from wrapper.cli.requests import index_reference

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "deploy" / "soci-index-on-push.yaml"
EVENTS = Path(__file__).resolve().parent / "events"
SOURCE = {"SourceLocation": "https://github.com/example/soci-wrapper.git"}

# Parameter sets a platform team would deploy with.
CONFIGS: dict[str, dict[str, str]] = {
    "defaults": {**SOURCE},
    "teams-v2": {
        **SOURCE,
        "RepositoryPatterns": "team-a/*,billing",
        "TagPatterns": "v*,release-*",
        "SociVersion": "V2",
        "OutputTag": "soci",
        "Platforms": "linux/amd64,linux/arm64",
    },
    "all-v2": {**SOURCE, "SociVersion": "V2", "OutputTag": "soci"},
}
V2_CONFIGS = [name for name, params in CONFIGS.items() if params.get("SociVersion") == "V2"]

# Which sample pushes start a build under which configuration.
STARTS_A_BUILD = {
    "push-tagged-image-index": {"defaults", "teams-v2", "all-v2"},
    "push-tagged-docker-manifest": {"defaults", "teams-v2", "all-v2"},
    "push-other-repository": {"defaults", "all-v2"},  # not under team-a/* or billing
}
# Pushes that must never start a build: not a push, or no tag (e.g. buildx's per-platform manifests).
NEVER = ["delete-tagged-image", "push-untagged-platform-manifest", "push-without-tag-field"]
# soci-wrapper's own pushes, by SOCI version.
OWN_PUSHES_V1 = ["soci-v1-index-untagged", "soci-v1-referrers-tag"]
OWN_PUSHES_V2 = ["soci-v2-index-untagged", "soci-v2-rewritten-manifest-untagged", "soci-v2-output-tag"]


def event(name: str) -> dict[str, Any]:
    data = json.loads((EVENTS / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


def stack(template: dict[str, Any], config: str) -> Stack:
    st = Stack(template, CONFIGS[config])
    assert st.check_rules() == [], f"{config}: CloudFormation would refuse these parameters"
    return st


def rule_pattern(st: Stack, rule: str) -> dict[str, Any]:
    """The rule's EventPattern as EventBridge receives it (a JSON string after Fn::Sub, or an object)."""
    pattern = st.resolve(st.resource(rule)["Properties"]["EventPattern"])
    parsed = json.loads(pattern) if isinstance(pattern, str) else pattern
    assert isinstance(parsed, dict)
    return parsed


def route(st: Stack, ev: dict[str, Any]) -> dict[str, Any] | None:
    """Where ``ev`` ends up: the StartBuild input for the CodeBuild project, or None if no build starts.

    The default bus's SelectRule forwards to the stack's bus (the event unchanged), whose IndexRule targets
    the project through an input transformer."""
    select = st.resolve(st.resource("SelectRule")["Properties"])
    index = st.resolve(st.resource("IndexRule")["Properties"])
    assert select["EventBusName"] == "default"
    assert index["EventBusName"] == "<IndexBus>"
    (forward,) = select["Targets"]
    (build,) = index["Targets"]
    assert forward["Arn"] == "<IndexBus.Arn>" and build["Arn"] == "<Project.Arn>"
    if not matches(rule_pattern(st, "SelectRule"), ev) or not matches(rule_pattern(st, "IndexRule"), ev):
        return None
    start_build = transform(build["InputTransformer"], ev)
    assert isinstance(start_build, dict)
    return start_build


def build_environment(st: Stack, start_build: dict[str, Any]) -> dict[str, str]:
    """The build's environment: CodeBuild's own variables, the project's, then the StartBuild overrides."""
    env = {"AWS_REGION": PSEUDO["AWS::Region"], "AWS_DEFAULT_REGION": PSEUDO["AWS::Region"]}
    project = st.resolve(st.resource("Project")["Properties"])
    for var in project["Environment"]["EnvironmentVariables"]:
        env[var["Name"]] = var["Value"]
    for var in start_build["environmentVariablesOverride"]:
        assert var["type"] == "PLAINTEXT"
        env[var["name"]] = var["value"]
    return env


def soci_wrapper_argv(st: Stack) -> list[str]:
    """The arguments the project's buildspec gives soci-wrapper (its build phase's invocation)."""
    project = st.resolve(st.resource("Project")["Properties"])
    buildspec = yaml.safe_load(project["Source"]["BuildSpec"])
    for command in buildspec["phases"]["build"]["commands"]:
        words = shlex.split(command, posix=True)
        if words and words[0].endswith("/soci-wrapper"):
            return words[1 : words.index(">")] if ">" in words else words[1:]
    raise AssertionError("the buildspec never runs soci-wrapper")


class Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("run_index")
        self.request = request


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No SOCI_WRAPPER_*/AWS region variables from the test run leak into what the CLI reads."""
    for name in list(os.environ):
        if name.startswith(("SOCI_WRAPPER_", "SOCI_RELEASE_")) or name in (
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ):
            monkeypatch.delenv(name)
    yield monkeypatch


def index_request(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str]) -> Any:
    """The IndexRequest soci-wrapper's `index` builds from ``argv`` and ``env``, captured at run_index."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def capture(request: Any, *rest: Any) -> Any:
        raise Captured(request)

    monkeypatch.setattr("wrapper.run.pipeline.run_index", capture)
    args = cli.build_parser().parse_args(cli._normalise_argv(argv))
    assert args.command == "index"
    reference = index_reference(args)
    quiet = Console(quiet=True)
    with pytest.raises(Captured) as caught:
        cli.cmd_index(args, quiet, quiet, lambda: "")
    request = caught.value.request
    assert request.reference == reference
    return request


# -- the template as a whole ---------------------------------------------------------------------------------
def test_cfn_lint_passes() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), "--include-checks", "I", "--", str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wiring_is_least_privilege(template: dict[str, Any]) -> None:
    st = stack(template, "teams-v2")
    res = {name: st.resolve(body) for name, body in st.resources.items() if not name.startswith("Fn::")}

    def statements(role: str) -> list[dict[str, Any]]:
        return [s for p in res[role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]

    # EventBridge may only put events on the stack's bus, and only start this project's builds.
    assert statements("ForwardRole") == [
        {"Effect": "Allow", "Action": "events:PutEvents", "Resource": "<IndexBus.Arn>"}
    ]
    assert statements("StartBuildRole") == [
        {"Effect": "Allow", "Action": "codebuild:StartBuild", "Resource": "<Project.Arn>"}
    ]
    for role in ("ForwardRole", "StartBuildRole", "BuildRole"):
        trust = res[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Condition"]["StringEquals"]["aws:SourceAccount"] for s in trust] == ["123456789012"]
    # The build: its own log group, ECR login; pull/push only through the per-pattern policies.
    build = {s["Sid"]: s for s in statements("BuildRole")}
    assert set(build) == {"OwnLogGroup", "EcrLogin"}  # the S3 source statement only with SourceType S3
    assert build["OwnLogGroup"]["Resource"] == "<LogGroup.Arn>"
    assert build["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken"
    (foreach,) = [body for name, body in st.resources.items() if name.startswith("Fn::ForEach::")]
    identifier, collection, fragment = foreach
    assert st.resolve(collection) == ["team-a/*", "billing"]
    (policy,) = fragment.values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert "ecr:PutImage" in statement["Action"] and "ecr:GetAuthorizationToken" not in statement["Action"]
    assert statement["Resource"] == {
        "Fn::Sub": f"arn:${{AWS::Partition}}:ecr:${{AWS::Region}}:${{AWS::AccountId}}:repository/${{{identifier}}}"
    }
    # Logs with retention; a dead-letter queue and a retry policy on both targets; a privileged project.
    assert res["LogGroup"]["Properties"]["RetentionInDays"] == "30"
    project = res["Project"]["Properties"]
    assert project["Environment"]["PrivilegedMode"] is True
    assert project["LogsConfig"]["CloudWatchLogs"] == {"Status": "ENABLED", "GroupName": "<LogGroup>"}
    for rule in ("SelectRule", "IndexRule"):
        (target,) = res[rule]["Properties"]["Targets"]
        assert target["DeadLetterConfig"] == {"Arn": "<DeadLetterQueue.Arn>"}
        assert set(target["RetryPolicy"]) == {"MaximumRetryAttempts", "MaximumEventAgeInSeconds"}
    queue_policy = res["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert queue_policy["Condition"]["ArnEquals"]["aws:SourceArn"] == ["<SelectRule.Arn>", "<IndexRule.Arn>"]


def test_parameter_rules_refuse_unsafe_input(template: dict[str, Any]) -> None:
    assert Stack(template, {**SOURCE, "SociVersion": "V2"}).check_rules() == [
        "SociVersion V2 needs OutputTag."
    ]
    broken = Stack(template, {**SOURCE, "TagPatterns": "v*,*"}).check_rules()
    assert len(broken) == 1 and "Leave TagPatterns empty" in broken[0]


# -- events through the rules, the input transformer and the CLI ---------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("sample", STARTS_A_BUILD)
def test_push_starts_a_build_of_that_image(
    template: dict[str, Any], config: str, sample: str, cli_environment: pytest.MonkeyPatch
) -> None:
    st = stack(template, config)
    ev = event(sample)
    start_build = route(st, ev)
    if config not in STARTS_A_BUILD[sample]:
        assert start_build is None
        return
    assert start_build is not None, f"{sample} should start a build under {config}"
    env = build_environment(st, start_build)
    detail = ev["detail"]
    assert env["SOCI_WRAPPER_REPO"] == detail["repository-name"]
    assert env["SOCI_WRAPPER_DIGEST"] == detail["image-digest"]
    assert env["SOCI_WRAPPER_REGION"] == ev["region"]
    assert env["SOCI_WRAPPER_ACCOUNT"] == ev["account"]

    argv = soci_wrapper_argv(st)
    assert argv == ["--json"]
    request = index_request(cli_environment, env, argv)
    assert str(request.reference) == (
        f"{ev['account']}.dkr.ecr.{ev['region']}.amazonaws.com/{detail['repository-name']}@{detail['image-digest']}"
    )
    params = CONFIGS[config]
    assert request.soci_version == params.get("SociVersion", "V1")
    assert request.output_tag == (params.get("OutputTag") or None)
    platforms = [str(p) for p in request.pull.platforms]
    assert platforms == (params["Platforms"].split(",") if "Platforms" in params else [])


@pytest.mark.parametrize(
    ("config", "sample"),
    [(c, s) for c in CONFIGS for s in NEVER + OWN_PUSHES_V1]
    # A V1 deployment makes no V2 pushes (there, "soci" is an ordinary tag).
    + [(c, s) for c in V2_CONFIGS for s in OWN_PUSHES_V2],
)
def test_soci_wrapper_pushes_and_untagged_pushes_match_no_rule(
    template: dict[str, Any], config: str, sample: str
) -> None:
    st = stack(template, config)
    ev = event(sample)
    assert route(st, ev) is None
    if sample in OWN_PUSHES_V1 + OWN_PUSHES_V2:
        # Not even the first rule may forward it where the guard alone would have to stop it.
        guard_only = ev["detail"]["image-tag"] in ("", CONFIGS[config].get("OutputTag"))
        assert guard_only or not matches(rule_pattern(st, "SelectRule"), ev)


def test_patterns_use_only_what_eventbridge_documents(template: dict[str, Any]) -> None:
    """The resolved patterns, as text, for a reviewer; and the wildcard semantics the matcher relies on."""
    st = stack(template, "teams-v2")
    assert rule_pattern(st, "SelectRule")["detail"] == {
        "action-type": ["PUSH"],
        "result": ["SUCCESS"],
        "repository-name": [{"wildcard": "team-a/*"}, {"wildcard": "billing"}],
        "image-tag": [{"wildcard": "v*"}, {"wildcard": "release-*"}],
    }
    assert rule_pattern(st, "IndexRule")["detail"]["image-tag"] == [{"anything-but": ["", "soci"]}]
    defaults = stack(template, "defaults")
    assert rule_pattern(defaults, "SelectRule")["detail"]["image-tag"] == [
        {"anything-but": {"prefix": "sha256-"}}
    ]
    assert rule_pattern(defaults, "IndexRule")["detail"]["image-tag"] == [{"anything-but": [""]}]
    assert wildcard_regex("team-a/*").fullmatch("team-a/api/v2")
    assert not wildcard_regex("team-a/*").fullmatch("team-ab/api")
    assert wildcard_regex("*").fullmatch("")  # why the guard must exclude untagged pushes explicitly

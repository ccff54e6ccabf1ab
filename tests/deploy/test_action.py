"""action.yml, the composite GitHub Action, run the way a runner runs it: its steps, parsed from action.yml, each
a bash script (``bash --noprofile --norc -eo pipefail``) with its ``${{ ... }}`` expressions substituted, the
step's env, and GITHUB_OUTPUT, GITHUB_PATH and GITHUB_ENV files read back between steps. Against the test
registry on loopback, this machine's containerd, and a tarball of the real soci served on 127.0.0.1 whose
sha256 the workflow gives as an input; the action's virtualenv is the install tests' shared one."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.release import ReleaseServer, script_env
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push
from tests.imagefactory import Image, LayerSpec, build_image
from wrapper.core.models import SOCI_INDEX_DIGEST_ANNOTATION, SOCI_INDEX_V1, SOCI_INDEX_V2, Descriptor
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class ActionRun:
    status: int  # of the last step run (a failing step ends the run, as on a runner)
    outputs: dict[str, str]
    steps: dict[str, dict[str, str]]  # step id -> its outputs
    stderr: str  # every step's, in order
    path: list[str] = field(default_factory=list)  # what the steps added to PATH


def read_command_file(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV: ``name=value`` lines and ``name<<DELIMITER`` ... ``DELIMITER`` blocks."""
    values: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for body_line in lines:
                if body_line == delimiter:
                    break
                body.append(body_line)
            else:
                raise AssertionError(f"{path.name}: {name} has no closing {delimiter}")
            values[name] = "\n".join(body)
        elif line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


class Runner:
    """Runs a composite action's steps as a GitHub runner does (the parts of it action.yml uses)."""

    def __init__(self, action_path: Path, temp: Path, env: Mapping[str, str]) -> None:
        self.action_path = action_path
        self.action = yaml.safe_load((action_path / "action.yml").read_text())
        self.temp = temp
        self.env = dict(env)

    def evaluate(self, text: str, inputs: Mapping[str, str], steps: Mapping[str, Mapping[str, str]]) -> str:
        def value(match: re.Match[str]) -> str:
            expression = match.group(1)
            parts = expression.split(".")
            if parts[0] == "inputs" and len(parts) == 2 and parts[1] in inputs:
                return inputs[parts[1]]
            if expression == "github.action_path":
                return str(self.action_path)
            if expression == "runner.temp":
                return str(self.temp)
            if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
                return steps.get(parts[1], {}).get(parts[3], "")
            raise AssertionError(f"action.yml uses an expression this runner does not know: {expression}")

        return EXPRESSION.sub(value, text)

    def run(self, given: Mapping[str, str]) -> ActionRun:
        declared = self.action["inputs"]
        unknown = set(given) - set(declared)
        assert not unknown, f"inputs action.yml does not declare: {unknown}"
        inputs = {name: given.get(name, str(spec.get("default", ""))) for name, spec in declared.items()}
        steps: dict[str, dict[str, str]] = {}
        added_path: list[str] = []
        added_env: dict[str, str] = {}
        stderr: list[str] = []
        status = 0
        for i, step in enumerate(self.action["runs"]["steps"]):
            assert "uses" not in step and step.get("shell") == "bash", step
            files = {
                name: self.temp / f"step{i}-{name.lower()}"
                for name in ("GITHUB_OUTPUT", "GITHUB_PATH", "GITHUB_ENV")
            }
            for file in files.values():
                file.write_text("")
            script = self.temp / f"step{i}.sh"
            script.write_text(self.evaluate(step["run"], inputs, steps))
            env = {**self.env, **added_env}
            env.update({name: str(file) for name, file in files.items()})
            env.update(
                GITHUB_ACTIONS="true",
                GITHUB_ACTION_PATH=str(self.action_path),
                RUNNER_TEMP=str(self.temp),
                RUNNER_OS="Linux",
                PATH=os.pathsep.join([*reversed(added_path), self.env["PATH"]]),
            )
            env.update({k: self.evaluate(str(v), inputs, steps) for k, v in step.get("env", {}).items()})
            result = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                env=env,
                cwd=self.temp,
                capture_output=True,
                text=True,
                timeout=600,
            )
            stderr.append(result.stderr)
            status = result.returncode
            if "id" in step:
                steps[step["id"]] = read_command_file(files["GITHUB_OUTPUT"])
            added_path += files["GITHUB_PATH"].read_text().splitlines()
            added_env.update(read_command_file(files["GITHUB_ENV"]))
            if status != 0:
                break
        outputs = {
            name: self.evaluate(str(spec["value"]), inputs, steps)
            for name, spec in self.action.get("outputs", {}).items()
        }
        return ActionRun(status, outputs, steps, "".join(stderr), added_path)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


@pytest.fixture
def runner(tmp_path: Path, source_tree: Path, runtime_venv: Path) -> Runner:
    """The action's directory (a copy of the sources), RUNNER_TEMP whose soci-wrapper/venv is the shared
    virtualenv, and the job's environment."""
    temp = tmp_path / "runner-temp"
    (temp / "soci-wrapper").mkdir(parents=True)
    (temp / "soci-wrapper" / "venv").symlink_to(runtime_venv)
    return Runner(source_tree, temp, script_env(tmp_path))


Publish = Callable[[str, list[LayerSpec]], tuple[Reference, Image]]


@pytest.fixture
def publish(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, request: pytest.FixtureRequest
) -> Publish:
    """Builds an image of the test's own content and pushes it to the test registry as REPO:v1."""

    def publish(repo: str, layers: list[LayerSpec]) -> tuple[Reference, Image]:
        image = build_image(tmp_path / "image", layers)
        return push(registry, client, repo, image), image

    return publish


def release_inputs(release: ReleaseServer) -> dict[str, str]:
    return {"soci-release-sha256": release.sha256, "soci-release-url": release.url}


def test_action_yml_is_a_composite_action_with_the_documented_inputs_and_outputs(runner: Runner) -> None:
    action = runner.action
    assert action["runs"]["using"] == "composite"
    assert set(action["inputs"]) == {
        "image", "repo", "digest", "tag", "region", "account", "soci-version", "output-tag", "platforms",
        "min-layer-size", "cache-dir", "args", "soci-release-sha256", "soci-release-url",
    }  # fmt: skip
    assert not [name for name, spec in action["inputs"].items() if spec.get("required")]
    assert {"soci-index-digests", "soci-image-tag", "soci-image-digest", "status", "result"} <= set(
        action["outputs"]
    )
    for step in action["runs"]["steps"]:  # inputs reach the scripts through env, never pasted into them
        assert "inputs." not in step["run"], step["name"]


def test_the_action_indexes_an_image_v1_with_its_cache_and_extra_arguments(
    tmp_path: Path, runner: Runner, release: ReleaseServer, publish: Publish, client: RegistryClient
) -> None:
    ref, image = publish("action/app", [LayerSpec(2 * MIB, seed=0xAC71), LayerSpec(100 * 1024, seed=0xAC72)])
    cache = tmp_path / "ztoc-cache"
    work = tmp_path / "work dir"  # a space: the args input is split as a shell would
    run = runner.run(
        {
            "image": f"{ref.registry}/{ref.repository}:v1",
            "min-layer-size": "1MiB",
            "cache-dir": str(cache),
            "args": f"--work-dir '{work}' --keep-work-dir",
            **release_inputs(release),
        }
    )
    assert run.status == 0, run.stderr
    (referrer,) = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    assert run.outputs["soci-index-digests"] == referrer.digest
    assert run.outputs["status"] == "indexed"
    assert run.outputs["soci-image-tag"] == "" and run.outputs["soci-image-digest"] == ""
    report = json.loads(Path(run.outputs["result"]).read_text())
    assert report["digest"] == image.digest
    assert run.path == [str(runner.temp / "soci-wrapper" / "venv" / "bin")]  # soci-wrapper for later steps
    assert "sha256 verified" in run.stderr  # soci from the release tarball, checked against the input
    assert any(cache.rglob("*")) and any(work.iterdir())

    again = runner.run(
        {"image": f"{ref.registry}/{ref.repository}:v1", "min-layer-size": "1MiB", **release_inputs(release)}
    )
    assert again.status == 0, again.stderr
    assert again.outputs["status"] == "already-indexed"
    assert again.outputs["soci-index-digests"] == referrer.digest


def test_the_action_makes_a_v2_soci_enabled_image(
    runner: Runner, release: ReleaseServer, publish: Publish, client: RegistryClient
) -> None:
    ref, _ = publish("action/v2", [LayerSpec(2 * MIB, seed=0xAC73)])
    run = runner.run(
        {
            "image": str(ref),
            "soci-version": "V2",
            "output-tag": "app-soci",
            "min-layer-size": "1MiB",
            **release_inputs(release),
        }
    )
    assert run.status == 0, run.stderr
    assert run.outputs["soci-image-tag"] == "app-soci"
    tagged = client.get_manifest(ref, "app-soci")
    assert run.outputs["soci-image-digest"] == tagged.descriptor.digest
    entries = [Descriptor.from_oci(m) for m in tagged.json()["manifests"]]
    (soci_index,) = [e for e in entries if e.artifact_type == SOCI_INDEX_V2]
    (enabled,) = [e for e in entries if e.artifact_type != SOCI_INDEX_V2]
    assert run.outputs["soci-index-digests"] == soci_index.digest
    annotations = client.get_manifest(ref, enabled.digest).json()["annotations"]
    assert annotations[SOCI_INDEX_DIGEST_ANNOTATION] == soci_index.digest


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"repo": "team/app", "digest": "sha256:" + "a" * 64, "region": "eu-west-1"},
            "--repo needs --account",
        ),
        ({"image": "127.0.0.1:1/x/y:1", "args": "--work-dir 'unclosed"}, "input args"),
    ],
)
def test_inputs_reach_soci_wrapper_and_bad_ones_fail_the_step(
    runner: Runner, release: ReleaseServer, inputs: dict[str, str], message: str
) -> None:
    run = runner.run({**inputs, **release_inputs(release)})
    assert run.status != 0
    assert message in run.stderr.splitlines()[-1]
    assert "soci-index-digests" not in run.steps.get("index", {})


def test_a_runner_that_knows_no_expression_refuses_it(runner: Runner) -> None:
    """The emulation fails on an expression it cannot evaluate, so action.yml cannot use one unnoticed."""
    with pytest.raises(AssertionError, match=r"github\.workspace"):
        runner.evaluate("${{ github.workspace }}", {}, {})

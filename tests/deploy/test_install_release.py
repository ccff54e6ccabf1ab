"""scripts/install-soci-release.sh, against a tarball laid out like the official soci-snapshotter release asset
(soci, soci-snapshotter-grpc, NOTICE.md and THIRD_PARTY_LICENSES at its top level) made from the real soci
v0.15.0 that bootstrap built, served over HTTP on 127.0.0.1 (the ``release`` fixture); and the install phase of
deploy/'s CodeBuild project. buildspec.yml's phases and scripts/install.sh are in test_install.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.cfn import Stack, load_template
from tests.deploy.release import (
    ARCH,
    ROOT,
    VERSION,
    WRONG_SHA256,
    ReleaseServer,
    installed,
    run_phases,
    script_env,
    soci_version,
)
from wrapper.core.pins import pin

SCRIPT = "scripts/install-soci-release.sh"
PLACEHOLDER_PINS = (
    f"SOCI_VERSION={VERSION}\nSOCI_RELEASE_SHA256_AMD64=UNPINNED\nSOCI_RELEASE_SHA256_ARM64=UNPINNED\n"
)


def checkout(tmp_path: Path, pins: str | None = None) -> Path:
    """A source tree with what the script uses: itself and pins.env (the real one unless given)."""
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "wrapper").mkdir()
    shutil.copy2(ROOT / SCRIPT, src / SCRIPT)
    (src / "wrapper" / "pins.env").write_text(pins or (ROOT / "wrapper" / "pins.env").read_text())
    return src


def run_script(src: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(src / SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


# -- the script ----------------------------------------------------------------------------------------------
def test_installs_the_verified_release(tmp_path: Path, release: ReleaseServer) -> None:
    src = checkout(tmp_path)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=release.sha256)
    result = run_script(src, env)
    assert result.returncode == 0, result.stderr
    soci = result.stdout.strip()
    assert result.stdout == soci + "\n"  # stdout is the path, nothing else
    assert Path(soci).parent.parent == tmp_path / "installs"
    assert f" {VERSION} " in soci_version(soci)
    assert (Path(soci).parent / "soci-snapshotter-grpc").is_file()
    assert "sha256 verified" in result.stderr
    assert installed(tmp_path) == [Path(soci).parent.name]  # no temporary files left

    # Again: the same install, without downloading.
    before = len(release.requests)
    again = run_script(src, env)
    assert again.returncode == 0 and again.stdout == result.stdout
    assert len(release.requests) == before


def test_wrong_checksum_is_refused_and_nothing_installed(tmp_path: Path, release: ReleaseServer) -> None:
    src = checkout(tmp_path)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=WRONG_SHA256)
    result = run_script(src, env)
    assert result.returncode == 3
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "refused" in line and release.sha256 in line and WRONG_SHA256 in line
    assert installed(tmp_path) == []


def test_tarball_without_soci_at_top_level_is_refused(tmp_path: Path, release: ReleaseServer) -> None:
    env = script_env(
        tmp_path,
        SOCI_RELEASE_URL=f"{release.base_url}/nested.tar.gz",
        SOCI_RELEASE_SHA256=release.nested_sha256,
    )
    result = run_script(checkout(tmp_path), env)
    assert result.returncode == 3, result.stderr
    assert "no soci" in result.stderr and installed(tmp_path) == []


@pytest.mark.parametrize("case", ["unpinned", "download fails"])
def test_unavailable_route_exits_2_without_installing(
    tmp_path: Path, release: ReleaseServer, case: str
) -> None:
    if case == "unpinned":  # pins.env with the placeholder, no override
        src = checkout(tmp_path, PLACEHOLDER_PINS)
        env = script_env(tmp_path, SOCI_RELEASE_URL=release.url)
    else:
        src = checkout(tmp_path)
        env = script_env(
            tmp_path,
            SOCI_RELEASE_URL=f"{release.base_url}/missing.tar.gz",
            SOCI_RELEASE_SHA256=release.sha256,
        )
    result = run_script(src, env)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert installed(tmp_path) == []


def uname_as(tmp_path: Path, machine: str) -> str:
    """A PATH whose ``uname -m`` says ``machine`` (the script picks the asset and the pin by it)."""
    shim = tmp_path / "uname-shim"
    shim.mkdir(exist_ok=True)
    real = shutil.which("uname")
    assert real is not None
    (shim / "uname").write_text(
        f'#!/bin/sh\nif [ "$1" = -m ]; then echo {machine}; else exec {real} "$@"; fi\n'
    )
    (shim / "uname").chmod(0o755)
    return f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.parametrize(("arch", "machine"), [("AMD64", "x86_64"), ("ARM64", "aarch64")])
def test_the_pinned_release_checksums_decide_what_the_script_does(
    tmp_path: Path, release: ReleaseServer, arch: str, machine: str
) -> None:
    """With the real pins.env and no override: a placeholder pin (not a sha256) is the documented "release
    route unavailable" (exit 2, one line naming the pin, nothing downloaded or installed); a pinned sha256 is
    checked, so the stand-in tarball served here (not the published asset) is refused (exit 3)."""
    value = pin(f"SOCI_RELEASE_SHA256_{arch}")
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, PATH=uname_as(tmp_path, machine))
    before = len(release.requests)
    result = run_script(checkout(tmp_path), env)
    assert result.stdout == "" and installed(tmp_path) == []
    (line,) = result.stderr.splitlines()
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        assert result.returncode == 3, result.stderr
        assert "refused" in line and value in line and release.sha256 in line
    else:
        assert value.startswith("UNPINNED"), (
            f"SOCI_RELEASE_SHA256_{arch}={value}: neither a sha256 nor a placeholder"
        )
        assert result.returncode == 2, result.stderr
        assert (
            f"no sha256 pinned for soci-snapshotter-{VERSION.removeprefix('v')}-linux-{arch.lower()}" in line
        )
        assert f"SOCI_RELEASE_SHA256_{arch}" in line and value in line
        assert len(release.requests) == before  # refused before any download


@pytest.mark.parametrize("right", [True, False])
def test_a_checksum_pinned_in_pins_env_is_checked(
    tmp_path: Path, release: ReleaseServer, right: bool
) -> None:
    """Once pins.env holds a sha256 (no SOCI_RELEASE_SHA256 override), the download must match it."""
    sha = release.sha256 if right else WRONG_SHA256
    pins = PLACEHOLDER_PINS.replace(
        f"SOCI_RELEASE_SHA256_{ARCH.upper()}=UNPINNED", f"SOCI_RELEASE_SHA256_{ARCH.upper()}={sha}"
    )
    assert sha in pins
    result = run_script(checkout(tmp_path, pins), script_env(tmp_path, SOCI_RELEASE_URL=release.url))
    if right:
        assert result.returncode == 0, result.stderr
        assert "sha256 verified" in result.stderr and f" {VERSION} " in soci_version(result.stdout.strip())
        assert installed(tmp_path) == [Path(result.stdout.strip()).parent.name]
    else:
        assert result.returncode == 3 and result.stdout == "" and installed(tmp_path) == []
        (line,) = result.stderr.splitlines()
        assert "refused" in line and WRONG_SHA256 in line and release.sha256 in line


# -- deploy/'s CodeBuild project --------------------------------------------------------------------------------
@pytest.mark.parametrize("right_checksum", [True, False])
def test_deploy_project_installs_the_release(
    tmp_path: Path, release: ReleaseServer, source_tree: Path, right_checksum: bool
) -> None:
    """The CodeBuild project of deploy/: its install phase (scripts/install.sh, for real), with the checksum
    the template's SociReleaseSha256 parameter passes in (the sources' pins.env pins none)."""
    template = load_template(ROOT / "deploy" / "soci-index-on-push.yaml")
    sha = release.sha256 if right_checksum else WRONG_SHA256
    stack = Stack(
        template, {"SourceLocation": "https://example.invalid/soci-wrapper.git", "SociReleaseSha256": sha}
    )
    project = stack.resolve(stack.resource("Project")["Properties"])
    project_env = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert project_env["SOCI_RELEASE_SHA256"] == sha
    spec = yaml.safe_load(project["Source"]["BuildSpec"])
    if not right_checksum:
        (source_tree / ".venv").unlink()  # its own, which must not be created
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, **project_env)
    run = run_phases(source_tree, spec, ["install"], env)
    if right_checksum:
        assert run.status == 0, run.stderr
        soci = source_tree / ".venv" / "bin" / "soci"
        assert soci.resolve().parent.parent == tmp_path / "installs"
        assert f" {VERSION} " in soci_version(str(soci))
        assert (source_tree / "phase-path").read_text().startswith(f"{source_tree}/.venv/bin:")
    else:
        assert run.status == 3, run.stderr
        assert installed(tmp_path) == [] and not (source_tree / ".venv").exists()

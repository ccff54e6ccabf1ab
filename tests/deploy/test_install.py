"""The runtime install (scripts/install.sh) and buildspec.yml's install and pre_build phases, run for real on a
copy of the runtime sources: the machine's containerd, soci from a release tarball of the real soci served on
127.0.0.1 (or the source route's cache, or SOCI_BIN), the package installed by pip into a virtualenv (shared by
these tests: the same sources need no second pip run), then `soci-wrapper doctor`.

Two kinds of CodeBuild image: the standard (Ubuntu) images, which ship containerd and runc with Docker and have
apt-get (this machine's PATH), and the Amazon Linux images, which have no apt-get: a PATH of symlinks to this
machine's programs without apt-get, dpkg and Debian's containerd, where containerd is the 2.x bootstrap built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.release import (
    VERSION,
    WRONG_SHA256,
    ReleaseServer,
    installed,
    run_phases,
    script_env,
    soci_version,
)
from wrapper.core.pins import pin

TEST_ONLY = {"pytest", "moto", "grpcio-tools", "mypy", "ruff", "cfn-lint", "pyyaml", "build"}
PHASES = ("install", "pre_build")


@pytest.fixture(scope="module")
def buildspec(runtime_sources: Path) -> dict[str, Any]:
    doc = yaml.safe_load((runtime_sources / "buildspec.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def path_without_apt(directory: Path, containerd: str | None, *, runc: bool = True) -> str:
    """A directory of symlinks to the programs on this machine's PATH, as an Amazon Linux image has them: no
    apt-get or dpkg, and no containerd but ``containerd`` (none when None); no runc unless ``runc``."""
    directory.mkdir()
    dropped = ("apt", "dpkg", "containerd", "ctr")
    for entry in os.environ["PATH"].split(os.pathsep):
        if not entry or not Path(entry).is_dir():
            continue
        for program in sorted(Path(entry).iterdir()):
            name = program.name
            if name.startswith(dropped) or (name == "runc" and not runc) or os.path.lexists(directory / name):
                continue
            if program.is_file() and os.access(program, os.X_OK):
                (directory / name).symlink_to(program)
    if containerd is not None:
        (directory / "containerd").symlink_to(containerd)
    return str(directory)


def system_containerd() -> str:
    found = shutil.which("containerd")
    assert found, "containerd is not on PATH: run scripts/bootstrap.sh"
    return found


def runc_version() -> str:
    out = subprocess.run(["runc", "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    return out.splitlines()[0].removeprefix("runc version ")


def pip_list(venv: Path) -> set[str]:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {p["name"].lower() for p in json.loads(out)}


def doctor_line(stdout: str, check: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.split()[1:2] == [f"{check}:"]]
    return line


def doctor_path(stdout: str, check: str) -> Path:
    """The program an ok doctor line names (``ok   soci: /path (version)``)."""
    line = doctor_line(stdout, check)
    assert line.startswith(f"ok   {check}: "), line
    return Path(line.split(": ", 1)[1].rsplit(" (", 1)[0])


def install(tree: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tree / "scripts" / "install.sh")], env=env, capture_output=True, text=True, timeout=600
    )


def no_venv(tree: Path) -> Path:
    """The tree's own .venv (not the shared one), which a failed install must not create."""
    (tree / ".venv").unlink()
    return tree / ".venv"


# -- the standard (Ubuntu) image: apt-get and containerd on PATH ---------------------------------------------
def test_buildspec_installs_the_runtime_with_the_release_and_doctor_passes(
    tmp_path: Path, release: ReleaseServer, source_tree: Path, buildspec: dict[str, Any]
) -> None:
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=release.sha256)
    run = run_phases(source_tree, buildspec, PHASES, env)
    assert run.status == 0, run.stderr
    venv = (source_tree / ".venv").resolve()
    soci = (venv / "bin" / "soci").resolve()
    assert soci.parent.parent == tmp_path / "installs"  # the release tarball's soci, installed for this run
    assert (venv / "bin" / "soci-snapshotter-grpc").resolve().parent == soci.parent
    assert "sha256 verified" in run.stderr and "ready in" in run.stderr
    # doctor: this machine's containerd, the release's soci
    assert doctor_line(run.stdout, "containerd").startswith(f"ok   containerd: {system_containerd()} (")
    assert doctor_path(run.stdout, "soci").resolve() == soci
    assert (source_tree / "phase-path").read_text().startswith(f"{source_tree}/.venv/bin:")
    packages = pip_list(venv)
    assert "soci-wrapper" in packages and not packages & TEST_ONLY, packages & TEST_ONLY

    # Again: nothing downloaded, no pip run.
    before = len(release.requests)
    again = install(source_tree, env)
    assert again.returncode == 0, again.stderr
    assert "installing soci-wrapper" not in again.stderr and len(release.requests) == before
    assert again.stdout == ""


@pytest.mark.parametrize("case", ["unpinned", "download fails"])
def test_buildspec_falls_back_to_the_source_route_when_the_release_is_unavailable(
    tmp_path: Path,
    release: ReleaseServer,
    source_tree: Path,
    buildspec: dict[str, Any],
    soci_bin: str,
    case: str,
) -> None:
    """No checksum pinned (the sources' pins.env has the placeholder) and none given, or the download fails:
    scripts/install-soci-source.sh's routes, here its per-version cache (as a machine that built soci once)."""
    cache = tmp_path / "cache"
    (cache / "soci-wrapper" / f"soci-{VERSION}").mkdir(parents=True)
    cached = cache / "soci-wrapper" / f"soci-{VERSION}" / "soci"
    cached.symlink_to(Path(soci_bin).resolve())
    extra = {} if case == "unpinned" else {"SOCI_RELEASE_SHA256": release.sha256}
    url = release.url if case == "unpinned" else f"{release.base_url}/missing.tar.gz"
    before = list(release.requests)
    env = script_env(tmp_path, SOCI_RELEASE_URL=url, XDG_CACHE_HOME=str(cache), **extra)
    run = run_phases(source_tree, buildspec, PHASES, env)
    assert run.status == 0, run.stderr
    assert (source_tree / ".venv" / "bin" / "soci").resolve() == Path(soci_bin).resolve()
    assert os.readlink(source_tree / ".venv" / "bin" / "soci") == str(cached)
    assert "trying the source build" in run.stderr
    assert installed(tmp_path) == []
    assert release.requests[len(before) :] == ([] if case == "unpinned" else ["/missing.tar.gz"])
    assert doctor_path(run.stdout, "soci").resolve() == Path(soci_bin).resolve()


def test_buildspec_fails_on_a_wrong_checksum_and_installs_nothing(
    tmp_path: Path, release: ReleaseServer, source_tree: Path, buildspec: dict[str, Any]
) -> None:
    venv = no_venv(source_tree)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=WRONG_SHA256)
    run = run_phases(source_tree, buildspec, PHASES, env)
    assert run.status == 3, run.stderr
    assert "refused" in run.stderr and WRONG_SHA256 in run.stderr
    assert installed(tmp_path) == [] and not venv.exists()


def test_no_route_to_soci_says_how_to_get_it(tmp_path: Path, source_tree: Path) -> None:
    """Unpinned, no cache, no source tarball and no Go: exit 9, the routes' reasons, then what to set."""
    venv = no_venv(source_tree)
    path = path_without_apt(tmp_path / "bin", containerd=system_containerd())
    (Path(path) / "go").unlink(missing_ok=True)
    env = script_env(
        tmp_path, PATH=path, XDG_CACHE_HOME=str(tmp_path / "cache"), SOCI_SOURCE=str(tmp_path / "none.tar.gz")
    )
    result = install(source_tree, env)
    assert result.returncode == 9, result.stderr
    assert "no Go toolchain on PATH" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"install: soci {VERSION} is missing: set SOCI_RELEASE_SHA256"
    )
    assert not venv.exists()


def test_soci_bin_is_used_as_it_is(
    tmp_path: Path, release: ReleaseServer, source_tree: Path, soci_bin: str
) -> None:
    before = len(release.requests)
    result = install(source_tree, script_env(tmp_path, SOCI_BIN=soci_bin, SOCI_RELEASE_URL=release.url))
    assert result.returncode == 0, result.stderr
    assert os.readlink(source_tree / ".venv" / "bin" / "soci") == soci_bin
    assert len(release.requests) == before and installed(tmp_path) == []


@pytest.mark.parametrize("runner", ["install.sh", "bootstrap.sh runtime-only"])
def test_a_soci_bin_that_is_not_soci_is_refused(tmp_path: Path, source_tree: Path, runner: str) -> None:
    venv = no_venv(source_tree)
    fake = tmp_path / "soci"
    fake.write_text("#!/bin/sh\necho 'soci version v0.9.0'\n")
    fake.chmod(0o755)
    env = script_env(tmp_path, SOCI_BIN=str(fake))
    if runner == "install.sh":
        result = install(source_tree, env)
    else:  # SOCI_WRAPPER_RUNTIME_ONLY=1 scripts/bootstrap.sh is the runtime install
        result = subprocess.run(
            [str(source_tree / "scripts" / "bootstrap.sh")],
            env={**env, "SOCI_WRAPPER_RUNTIME_ONLY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 9
    assert result.stderr.splitlines()[-1] == (
        f"install: SOCI_BIN={fake} is not an executable soci {VERSION}: point it at soci {VERSION}, or unset it "
        "to install the release tarball"
    )
    assert not venv.exists()


# -- the Amazon Linux images: no apt-get ---------------------------------------------------------------------
@pytest.mark.parametrize("runc", [True, False])
def test_buildspec_installs_without_apt_with_containerd_2_as_the_only_containerd(
    tmp_path: Path,
    release: ReleaseServer,
    source_tree: Path,
    buildspec: dict[str, Any],
    containerd2_bin: str,
    runc: bool,
) -> None:
    """Without runc too: indexing runs no container, so only a note says it is missing."""
    path = path_without_apt(tmp_path / "bin", containerd=containerd2_bin, runc=runc)
    assert not (Path(path) / "apt-get").exists() and not (Path(path) / "dpkg").exists()
    env = script_env(tmp_path, PATH=path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=release.sha256)
    run = run_phases(source_tree, buildspec, PHASES, env)
    assert run.status == 0, run.stderr
    version = pin("CONTAINERD2_VERSION").removeprefix("v")
    runc_note = (
        f"runc {runc_version()} at {path}/runc" if runc else "no runc (index and verify run no containers)"
    )
    assert f"install: containerd {version} at {path}/containerd, {runc_note}, Python " in run.stderr
    assert doctor_line(run.stdout, "containerd") == f"ok   containerd: {path}/containerd ({version})"
    assert (source_tree / ".venv" / "bin" / "soci").resolve().parent.parent == tmp_path / "installs"
    assert f" {VERSION} " in soci_version(str(source_tree / ".venv" / "bin" / "soci"))


@pytest.mark.parametrize(
    ("runc", "missing"), [(True, "containerd not found"), (False, "containerd and runc not found")]
)
def test_without_apt_and_containerd_one_line_says_what_is_missing_and_how_to_get_it(
    tmp_path: Path, source_tree: Path, runc: bool, missing: str
) -> None:
    venv = no_venv(source_tree)
    env = script_env(tmp_path, PATH=path_without_apt(tmp_path / "bin", containerd=None, runc=runc))
    result = install(source_tree, env)
    assert result.returncode == 9
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"install: cannot install soci-wrapper here: {missing} on PATH and there is no apt-get"
    )
    assert "'sudo dnf install -y containerd'" in line
    assert "https://github.com/containerd/containerd/releases" in line
    assert "https://github.com/opencontainers/runc/releases" in line
    assert line.endswith("then run scripts/install.sh again")
    assert not venv.exists() and installed(tmp_path) == []


def test_an_old_python_is_reported_with_the_way_to_a_new_one(tmp_path: Path, source_tree: Path) -> None:
    venv = no_venv(source_tree)
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.9.16' && exit 0\nexit 1\n")
    old.chmod(0o755)
    result = install(source_tree, script_env(tmp_path, PYTHON=str(old)))
    assert result.returncode == 9
    (line,) = result.stderr.splitlines()
    assert f"no Python >= 3.11 with venv ({old} is Python 3.9.16)" in line
    assert "dnf install -y python3.11" in line
    assert not venv.exists()

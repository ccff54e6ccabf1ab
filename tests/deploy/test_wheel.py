"""The wheel: `python -m build --wheel` of a copy of the sources, installed with pip into a fresh virtualenv
outside the checkout (its dependencies from PyPI or pip's cache), run from a directory of its own: `doctor
--json` finds soci and containerd through the flags, the environment and PATH (and says where it looked), and
one real `index` against the test registry, with soci given by SOCI_BIN and containerd on PATH, pushes an
index. Nothing of the checkout (its .deps, its sources) is within the installed program's reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.release import ROOT, copy_sources, script_env
from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push
from tests.imagefactory import LayerSpec, build_image
from wrapper import __version__
from wrapper.core.models import SOCI_INDEX_V1
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci


@dataclass
class Installed:
    venv: Path
    wheel: Path
    workdir: Path  # an empty directory outside the checkout, the programs' working directory
    env: dict[str, str]  # no SOCI_BIN, PATH without soci

    @property
    def program(self) -> str:
        return str(self.venv / "bin" / "soci-wrapper")

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.program, *args],
            env={**self.env, **env},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def doctor(self, *args: str, **env: str) -> dict[str, Any]:
        result = self.run("doctor", "--json", *args, **env)
        report = json.loads(result.stdout)
        assert isinstance(report, dict)
        assert result.returncode == (0 if report["ok"] else 9), result.stderr
        return report


def path_without_soci() -> str:
    """This machine's PATH without the directories that hold a soci (the checkout's .venv/bin may)."""
    entries = os.environ["PATH"].split(os.pathsep)
    return os.pathsep.join(e for e in entries if e and not (Path(e) / "soci").exists())


def probes(report: dict[str, Any], program: str) -> list[tuple[str, str | None, str]]:
    """Where doctor looked for ``program``: (where, path, result) in order."""
    return [(p["where"], p["path"], p["result"]) for p in report["looked"][program]["probes"]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    sources = copy_sources(base / "src", ("pyproject.toml", "README.md", "wrapper"))
    env = script_env(base)
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(base / "dist"), str(sources)],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (base / "dist").glob("soci_wrapper-*-py3-none-any.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    workdir = base / "elsewhere"
    workdir.mkdir()
    env["PATH"] = path_without_soci()
    env.pop("PYTHONPATH", None)
    return Installed(venv, wheel, workdir, env)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def test_the_wheel_holds_the_package_and_runs_from_its_own_install(installed: Installed) -> None:
    assert installed.wheel.name == f"soci_wrapper-{__version__}-py3-none-any.whl"
    version = installed.run("--version")
    assert version.returncode == 0 and __version__ in version.stdout + version.stderr
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import wrapper, wrapper.api; print(wrapper.__file__)",
        ],
        env=installed.env,
        cwd=installed.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(installed.venv) and not package.is_relative_to(ROOT)
    assert (package / "pins.env").is_file() and (package / "py.typed").is_file()


def test_doctor_finds_soci_and_containerd_by_flag_environment_and_path(
    installed: Installed, tmp_path: Path, soci_bin: str, containerd2_bin: str
) -> None:
    soci = str(Path(soci_bin).resolve())
    system_containerd = shutil.which("containerd", path=installed.env["PATH"])
    assert system_containerd is not None

    # Nothing given and no soci on PATH: not found, and the checkout's .deps/bin/soci is not taken; doctor
    # says where it looked (the flag, the variable, the virtualenv's bin, PATH).
    scripts = str(installed.venv / "bin" / "soci")
    missing = installed.doctor()
    assert missing["ok"] is False and missing["soci"]["binary"] is None
    assert probes(missing, "soci") == [
        ("$SOCI_BIN", None, "not set"),
        ("scripts", scripts, "missing"),
        ("PATH", None, "not on PATH"),
    ]
    assert missing["containerd"]["binary"] == system_containerd
    assert probes(missing, "containerd")[-1] == ("PATH", system_containerd, "found")
    human = installed.run("doctor")
    assert human.returncode == 9
    assert (
        f"     looked: $SOCI_BIN (not set); scripts {scripts} (missing); PATH (not on PATH)"
        in human.stdout.splitlines()
    )

    flags = installed.doctor("--soci-bin", soci_bin, "--containerd-bin", containerd2_bin)
    assert flags["ok"] is True
    assert flags["soci"]["binary"] == soci and probes(flags, "soci") == [("--soci-bin", soci_bin, "found")]
    assert flags["containerd"]["binary"] == containerd2_bin and flags["containerd"]["version"].startswith(
        "2."
    )
    assert probes(flags, "containerd") == [("--containerd-bin", containerd2_bin, "found")]

    environment = installed.doctor(SOCI_BIN=soci_bin)
    assert environment["ok"] is True and environment["soci"]["binary"] == soci
    assert probes(environment, "soci") == [("$SOCI_BIN", soci_bin, "found")]

    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "soci").symlink_to(soci)
    path = installed.doctor(PATH=f"{on_path}{os.pathsep}{installed.env['PATH']}")
    assert path["ok"] is True and Path(path["soci"]["binary"]).resolve() == Path(soci)
    assert probes(path, "soci")[-1] == ("PATH", str(on_path / "soci"), "found")


def test_the_installed_wheel_indexes_an_image(
    installed: Installed, tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str
) -> None:
    image = build_image(
        tmp_path / "image", [LayerSpec(2 * MIB, seed=0x3E1), LayerSpec(64 * 1024, seed=0x3E2)]
    )
    ref = push(registry, client, "wheel/app", image)
    result = installed.run("index", str(ref), "--min-layer-size", "1MiB", "--json", SOCI_BIN=soci_bin)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (referrer,) = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    assert [i["soci_index_digest"] for i in report["indexes"]] == [referrer.digest]
    assert report["status"] == "indexed"

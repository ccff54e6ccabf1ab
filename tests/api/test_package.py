"""The API as a wheel ships it: ``wrapper/api.py`` with ``py.typed`` (PEP 561), importable and usable away from
the checkout, with soci named by ``SOCI_BIN``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT
from wrapper.containerd.daemon import ManagedContainerd

# Run by the unpacked wheel, away from the checkout: where the API comes from, and what it would use.
PROBE = """
import json, sys
import wrapper, wrapper.api as api
report = api.run_doctor(containerd_address=sys.argv[1])
print(json.dumps({"api": api.__file__, "package": wrapper.__file__, "ok": report.ok, "soci": report.soci["binary"],
                  "containerd": report.containerd["usable"], "public": sorted(api.__all__)}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of what packaging reads (the checkout gets no build files)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "wrapper", src / "wrapper", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(src)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    [built] = tmp.glob("soci_wrapper-*.whl")
    return built


def test_the_wheel_ships_the_api_and_its_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"wrapper/__init__.py", "wrapper/api.py", "wrapper/py.typed", "wrapper/pins.env"} <= names


@pytest.mark.soci
def test_the_installed_api_runs_away_from_the_checkout(
    wheel: Path, tmp_path: Path, soci_bin: str, containerd: ManagedContainerd
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if str(ROOT) not in p)
    env = {"PATH": path, "PYTHONPATH": str(site), "SOCI_BIN": soci_bin, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, containerd.address],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["api"] == str(site / "wrapper" / "api.py")  # not the checkout's
    assert got["package"] == str(site / "wrapper" / "__init__.py")
    assert got["soci"] == str(Path(soci_bin).resolve()) and got["containerd"] is True and got["ok"] is True
    assert {"run_index", "run_index_many", "run_verify", "run_pull", "IndexReport", "NotFoundError"} <= set(
        got["public"]
    )

"""scripts/bootstrap.sh's routes to soci, run on a copy of the project's scripts (so the checkout's .deps is
untouched) with a cache directory of the test's own, and the CI rule for tests that need soci."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from wrapper.core.pins import pin

pytestmark = pytest.mark.soci


def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A project tree holding bootstrap's inputs, a .venv that needs no pip run, and a
    cache that has the test-only programs (containerd 2.x, zot) but no soci."""
    tree = tmp_path / "project"
    (tree / "scripts").mkdir(parents=True)
    (tree / "wrapper").mkdir()
    for script in ("bootstrap.sh", "install-soci-source.sh"):
        shutil.copy(ROOT / "scripts" / script, tree / "scripts")
    shutil.copy(ROOT / "wrapper" / "pins.env", tree / "wrapper")
    shutil.copy(ROOT / "pyproject.toml", tree)
    # A .venv of its own that bootstrap takes as installed (its python and its stamp are the checkout's), so
    # that what bootstrap writes there (the links to soci) never touches the checkout's .venv.
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").symlink_to(ROOT / ".venv" / "bin" / "python")
    shutil.copy(ROOT / ".venv" / ".soci-wrapper-installed", tree / ".venv")
    cache = tmp_path / "cache" / "soci-wrapper"
    cache.mkdir(parents=True)
    real = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "soci-wrapper"
    for tool in (f"containerd-{pin('CONTAINERD2_VERSION')}", f"zot-{pin('ZOT_VERSION')}"):
        if (real / tool).is_dir():
            (cache / tool).symlink_to(real / tool)
    return tree, tmp_path / "cache"


def bootstrap(tree: Path, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("SOCI_BIN", "SOCI_SOURCE")}
    full.update({"SOCI_WRAPPER_SKIP_APT": "1", "XDG_CACHE_HOME": str(cache), **env})
    return subprocess.run(
        ["bash", str(tree / "scripts" / "bootstrap.sh")],
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
    )


def test_soci_bin_of_the_pinned_version_is_used(tmp_path: Path, soci_bin: str) -> None:
    tree, cache = sandbox(tmp_path)
    proc = bootstrap(tree, cache, SOCI_BIN=soci_bin, SOCI_SOURCE=str(tmp_path / "none.tar.gz"))
    assert proc.returncode == 0, proc.stderr
    assert (tree / ".deps" / "bin" / "soci").resolve() == Path(soci_bin).resolve()
    assert not (tree / ".deps" / "soci-build-error.txt").exists()
    assert not (cache / "soci-wrapper" / f"soci-{pin('SOCI_VERSION')}" / "soci").exists()  # nothing built


def test_every_route_failing_is_reported_route_by_route(tmp_path: Path) -> None:
    tree, cache = sandbox(tmp_path)
    bad = tmp_path / "soci-snapshotter-v0.15.0.tar.gz"
    bad.write_bytes(b"not the source tarball")
    not_soci = tmp_path / "soci"
    not_soci.write_text("#!/bin/sh\necho 'soci version v0.9.0'\n")
    not_soci.chmod(0o755)
    # No network route either: the Go module proxy is pointed at a closed loopback port.
    proc = bootstrap(
        tree,
        cache,
        SOCI_BIN=str(not_soci),
        SOCI_SOURCE=str(bad),
        GOPROXY="http://127.0.0.1:9",
        GOFLAGS="-mod=mod",
    )
    assert proc.returncode == 0, proc.stderr  # bootstrap carries on: the tests say what is missing
    error = (tree / ".deps" / "soci-build-error.txt").read_text()
    assert error.startswith(f"soci {pin('SOCI_VERSION')} is not available; every route failed:")
    assert f"SOCI_BIN={not_soci}: not an executable soci {pin('SOCI_VERSION')}" in error
    assert (
        f"source tarball: {bad} has sha256 " in error
        and f"expected {pin('SOCI_SOURCE_SHA256')}; not used" in error
    )
    assert "Go module proxy: build failed" in error
    assert not (tree / ".deps" / "bin" / "soci").exists()
    assert "every route failed" in proc.stderr


def test_ci_fails_a_test_that_needs_soci_when_soci_is_missing(tmp_path: Path) -> None:
    test = "tests/e2e/test_demo.py::test_demo_runs_to_the_end_and_cleans_up"
    env = {**os.environ, "SOCI_BIN": "/nonexistent/soci", "PATH": "/usr/bin:/bin"}
    env.pop("CI", None)
    local = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], capture_output=True, text=True,
        env={**env, "CI": "true"}, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert ci.returncode != 0 and "1 error" in ci.stdout and "CI is set" in ci.stdout, ci.stdout

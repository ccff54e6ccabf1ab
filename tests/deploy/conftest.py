"""Fixtures of the install tests: the soci release on loopback, and a copy of the runtime sources with one
virtualenv shared by the tests that install them (the same sources need no second pip run: scripts/install.sh
keeps a stamp)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.release import ReleaseServer, copy_sources, serve_release


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory, soci_bin: str) -> Iterator[ReleaseServer]:
    """A tarball laid out like the official soci-snapshotter release asset, made from the real soci v0.15.0
    that bootstrap built, served over HTTP on 127.0.0.1."""
    with serve_release(tmp_path_factory.mktemp("release"), soci_bin) as server:
        yield server


@pytest.fixture(scope="session")
def runtime_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One snapshot of the runtime sources per session (a checkout edited meanwhile does not change it)."""
    return copy_sources(tmp_path_factory.mktemp("sources") / "soci-wrapper")


@pytest.fixture(scope="session")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the runtime install's virtualenv lives (created by the first test that installs)."""
    return tmp_path_factory.mktemp("runtime-venv") / "venv"


@pytest.fixture
def source_tree(tmp_path: Path, runtime_sources: Path, runtime_venv: Path) -> Path:
    """The test's own copy of the runtime sources, whose .venv is the session's shared virtualenv."""
    tree = tmp_path / "src"
    shutil.copytree(runtime_sources, tree, symlinks=True)
    (tree / ".venv").symlink_to(runtime_venv)
    return tree

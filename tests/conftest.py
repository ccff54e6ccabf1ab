"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per real component."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.containerd",
    "tests.fixtures.registry",
]

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``soci`` gets the ``soci_bin`` fixture, so it skips (or, under CI, fails) without soci."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if item.get_closest_marker("soci") is not None and names is not None and "soci_bin" not in names:
            names.insert(0, "soci_bin")


def _soci_unavailable_reason() -> str:
    err = ROOT / ".deps" / "soci-build-error.txt"
    if err.exists():
        lines = err.read_text().strip().splitlines()
        return " ".join(line.strip() for line in lines[:3])  # the headline and the first route's error
    return "soci binary not found; run scripts/bootstrap.sh"


@pytest.fixture(scope="session")
def soci_bin() -> str:
    """The real soci binary built by scripts/bootstrap.sh.

    If bootstrap could not build it (see .deps/soci-build-error.txt), tests that need soci are skipped with
    the exact build error as the reason; under CI (``CI`` set) they fail instead, so CI can never go green
    without the soci path. Nothing else stands in for soci.
    """
    candidate = os.environ.get("SOCI_BIN") or str(ROOT / ".deps" / "bin" / "soci")
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("soci")
    if found:
        return found
    reason = f"soci is not available: {_soci_unavailable_reason()}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: tests that need soci must run)", pytrace=False)
    pytest.skip(reason)

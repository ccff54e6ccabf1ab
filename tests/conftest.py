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


@pytest.fixture(scope="session")
def soci_bin() -> str:
    """The real soci binary built by scripts/bootstrap.sh.

    If bootstrap could not build it (see .deps/soci-build-error.txt), tests that need soci are skipped with
    the exact build error as the reason; nothing else stands in for soci.
    """
    candidate = os.environ.get("SOCI_BIN") or str(ROOT / ".deps" / "bin" / "soci")
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("soci")
    if found:
        return found
    err = ROOT / ".deps" / "soci-build-error.txt"
    if err.exists():
        lines = err.read_text().strip().splitlines()
        reason = " ".join(line.strip() for line in lines[:3])  # the headline and the first error
    else:
        reason = "soci binary not found; run scripts/bootstrap.sh"
    pytest.skip(f"soci is not available: {reason}")

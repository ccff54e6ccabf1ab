"""scripts/demo.sh, the README's main-job walk-through, runs to the end: V1 on all platforms, V2, the V1 rerun."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, processes


@pytest.mark.soci
def test_demo_runs_to_the_end_and_cleans_up(tmp_path: Path, soci_bin: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    env.update(TMPDIR=str(tmp_path), SOCI_BIN=soci_bin)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("==> push: soci push to") == 1  # the first V1 run pushed; the rerun did not
    assert "soci create linux/amd64: 2 built, 1 skipped" in out
    assert "soci create linux/arm64/v8: 2 built, 1 skipped" in out
    assert "already indexed:" in out  # the V1 rerun
    assert "SOCI index v1" in out and "v1-soci" in out  # what the registry holds, as the demo shows it
    assert "error" not in out.lower()
    assert list(tmp_path.iterdir()) == []  # registry data, images, work directories: all removed
    assert processes(tmp_path) == []

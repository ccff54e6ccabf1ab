"""`soci-wrapper doctor --json` against the real containerd binary and daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    full_env = {k: v for k, v in os.environ.items() if k != "SOCI_BIN"}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", "doctor", "--json", *args],
        capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_reports_managed_containerd_and_soci() -> None:
    code, report = doctor()
    assert report["containerd"]["mode"] == "managed"
    assert report["containerd"]["binary"].endswith("containerd")
    assert report["containerd"]["version"].startswith("1.")
    assert report["root"] is (os.geteuid() == 0)
    assert report["soci"]["expected"] == "v0.15.0"
    names = {c["name"]: c for c in report["checks"]}
    assert names["containerd"]["ok"] is True
    soci_built = (ROOT / ".deps" / "bin" / "soci").exists()
    assert names["soci"]["ok"] is soci_built
    if soci_built:
        assert "v0.15.0" in report["soci"]["version"]
    else:
        assert "bootstrap" in names["soci"]["fix"]
    assert report["ok"] is all(c["ok"] for c in report["checks"] if c["required"])
    assert code == (0 if report["ok"] else 9)


def test_doctor_missing_pieces_say_how_to_fix(tmp_path: Path) -> None:
    code, report = doctor("--containerd-bin", str(tmp_path / "nope"), "--soci-bin", str(tmp_path / "nosoci"))
    assert code == 9 and report["ok"] is False
    names = {c["name"]: c for c in report["checks"]}
    assert not names["containerd"]["ok"] and "containerd" in names["containerd"]["fix"]
    assert not names["soci"]["ok"] and names["soci"]["fix"]


def test_doctor_attach_mode(containerd) -> None:
    _, report = doctor("--containerd-address", containerd.address)
    assert report["containerd"]["mode"] == "attach"
    assert report["containerd"]["usable"] is True
    assert report["containerd"]["version"].startswith("1.")
    _, report = doctor("--containerd-address", "/nonexistent/containerd.sock")
    names = {c["name"]: c for c in report["checks"]}
    assert names["containerd"]["ok"] is False
    assert "cannot reach containerd" in names["containerd"]["detail"]

"""``soci-wrapper doctor --json`` against the real containerd (its binary, and a running daemon to attach to) and
the real soci. What doctor reports is checked against what each test finds out for itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import ROOT
from wrapper.containerd.daemon import ManagedContainerd


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    full_env = {k: v for k, v in os.environ.items() if k != "SOCI_BIN"}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", "doctor", "--json", *args],
        capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def version_line(*argv: str) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.split()


def test_doctor_reports_managed_containerd_and_soci(soci_bin: str) -> None:
    containerd = shutil.which("containerd")
    assert containerd is not None, "containerd is not on PATH: run scripts/bootstrap.sh"
    # "containerd github.com/containerd/containerd 1.6.20~ds1 ..."; "soci version v0.15.0 <commit>"
    containerd_version = version_line(containerd, "--version")[2]
    soci_version = " ".join(version_line(soci_bin, "--version")[2:])
    root = os.geteuid() == 0

    code, report = doctor(env={"SOCI_BIN": soci_bin})
    assert report["root"] is root
    assert report["containerd"] == {
        "mode": "managed", "binary": containerd, "version": containerd_version, "usable": root,
    }  # fmt: skip
    assert report["soci"] == {
        "binary": str(Path(soci_bin).resolve()), "version": soci_version, "expected": "v0.15.0", "usable": True,
    }  # fmt: skip
    checks = {c["name"]: (c["ok"], c["required"]) for c in report["checks"]}
    assert checks == {"containerd": (True, True), "root": (root, True), "soci": (True, True)}
    # Both programs work here, so root alone decides: a managed containerd needs it.
    assert (code, report["ok"]) == ((0, True) if root else (9, False))


def test_doctor_missing_pieces_say_how_to_fix(tmp_path: Path) -> None:
    code, report = doctor("--containerd-bin", str(tmp_path / "nope"), "--soci-bin", str(tmp_path / "nosoci"))
    assert code == 9 and report["ok"] is False
    names = {c["name"]: c for c in report["checks"]}
    assert not names["containerd"]["ok"] and "containerd" in names["containerd"]["fix"]
    assert not names["soci"]["ok"] and names["soci"]["fix"]


def test_doctor_attach_mode(containerd: ManagedContainerd, soci_bin: str) -> None:
    assert containerd.pid is not None
    daemon_version = version_line(os.readlink(f"/proc/{containerd.pid}/exe"), "--version")[
        2
    ]  # the running one
    code, report = doctor("--containerd-address", containerd.address, "--soci-bin", soci_bin)
    assert report["containerd"]["mode"] == "attach"
    assert report["containerd"]["usable"] is True
    assert report["containerd"]["version"] == daemon_version
    assert [c["name"] for c in report["checks"]] == ["containerd", "soci"]  # attached: root is not needed
    assert (code, report["ok"]) == (0, True)

    code, report = doctor("--containerd-address", "/nonexistent/containerd.sock", "--soci-bin", soci_bin)
    names = {c["name"]: c for c in report["checks"]}
    assert names["containerd"]["ok"] is False
    assert "cannot reach containerd" in names["containerd"]["detail"]
    assert (code, report["ok"]) == (9, False)

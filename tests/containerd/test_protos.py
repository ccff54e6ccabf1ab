"""The checked-in stubs in wrapper/containerd/_proto/ are exactly what scripts/gen-protos.sh generates."""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_PACKAGE = Path("wrapper/containerd/_proto")
SERVICES = ("containers", "content", "diff", "images", "leases", "namespace", "snapshots", "tasks", "version")
# Message types only (no service).
TYPES = ("descriptor", "metrics", "mount", "process")


def _generated(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "_pb2" in p.name and p.suffix in (".py", ".pyi"))


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    fresh, committed = tmp_path / PROTO_PACKAGE, ROOT / PROTO_PACKAGE
    names = _generated(fresh)
    assert {f"{s}_pb2_grpc.py" for s in SERVICES} <= set(names)
    assert _generated(committed) == names, "stale stubs: run scripts/gen-protos.sh"
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert mismatch == [] and errors == [], f"stale stubs {mismatch or errors}: run scripts/gen-protos.sh"


def test_every_proto_has_stubs_and_they_import() -> None:
    protos = sorted(p.stem for p in (ROOT / "protos" / PROTO_PACKAGE).glob("*.proto"))
    assert protos == sorted([*SERVICES, *TYPES])
    for name in protos:
        module = importlib.import_module(f"wrapper.containerd._proto.{name}_pb2")
        assert module.DESCRIPTOR.name == f"{PROTO_PACKAGE}/{name}.proto"
        importlib.import_module(f"wrapper.containerd._proto.{name}_pb2_grpc")

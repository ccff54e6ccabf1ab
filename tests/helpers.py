"""Small helpers shared by the test modules: running the CLI, distinct content per test, pushing images."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.imagefactory import Image, ImageIndex, push_image
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``soci-wrapper ARGS`` in a child process, without the caller's SOCI_WRAPPER_* variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SOCI_WRAPPER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        cwd=ROOT,
        timeout=timeout,
    )


def seed_for(request: pytest.FixtureRequest) -> int:
    """Distinct image content per test: the session's containerd shares blobs across namespaces."""
    return int(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8], 16)


def push(registry: RegistryServer, client: RegistryClient, repo: str, image: Image | ImageIndex) -> Reference:
    """Push ``image`` as ``repo:v1``; returns its reference pinned by digest."""
    ref = Reference(registry.host, repo, tag="v1")
    return ref.with_digest(push_image(client, ref, image))


def faulty_soci(
    directory: Path, real_soci: str, *, create: str = "", push: str = "", convert: str = ""
) -> str:
    """A fault-injection shim around the real soci: it answers ``--version`` (and every command not named)
    by running the real binary, and for a named command ``fail``s (exit 1 with soci-like stderr), ``hang``s
    (sleeps, with a child process of its own) or is ``kill``ed by SIGKILL. Tests of soci-wrapper's handling
    of soci's failures use it; everything else runs the real soci."""
    behaviours = {"create": create, "push": push, "convert": convert}
    cases = []
    for command, behaviour in behaviours.items():
        action = {
            "fail": 'echo "soci: injected failure" >&2; exit 1',
            "hang": "sleep 300 & wait",
            "kill": "kill -KILL $$",
            "": "",
        }[behaviour]
        if action:
            cases.append(f"    {command}) {action} ;;")
    script = directory / f"faulty-soci-{create or '-'}-{push or '-'}-{convert or '-'}"
    lines = [
        "#!/usr/bin/env bash",
        "# find the command among soci's arguments (global flags come first)",
        'for arg in "$@"; do',
        '  case "$arg" in',
        *[c.replace("    ", "    ", 1) for c in cases],
        "  esac",
        "done",
        f'exec {real_soci} "$@"',
    ]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script)

"""What the install tests share: a soci release tarball served on 127.0.0.1, copies of the project's runtime
sources (what a CodeBuild source checkout, a GitHub Action's directory or a fresh clone holds), the environment
the install scripts run with, and buildspec phases run the way CodeBuild runs them."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shlex
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.core.pins import pin

ROOT = Path(__file__).resolve().parents[2]
VERSION = pin("SOCI_VERSION")
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, os.uname().machine)
ASSET = f"soci-snapshotter-{VERSION.removeprefix('v')}-linux-{ARCH}.tar.gz"
WRONG_SHA256 = "0" * 64
# What a source tree needs to install soci-wrapper for running it (no tests, no benchmarks).
RUNTIME_SOURCES = ("pyproject.toml", "README.md", "wrapper", "scripts", "buildspec.yml", "action.yml")


@dataclass
class ReleaseServer:
    base_url: str
    sha256: str  # of the official-layout tarball at /ASSET
    nested_sha256: str  # of /nested.tar.gz, whose soci is one directory down
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.base_url}/{ASSET}"


def make_tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if not name.endswith((".md", "LICENSES")) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@contextmanager
def serve_release(docroot: Path, soci: str) -> Iterator[ReleaseServer]:
    """The official asset's layout (soci, soci-snapshotter-grpc, NOTICE.md and THIRD_PARTY_LICENSES at its top
    level) with the real soci and a stand-in daemon (nothing here runs it), served over HTTP on 127.0.0.1."""
    official = make_tarball(
        {
            "NOTICE.md": b"stand-in NOTICE.md\n",
            "THIRD_PARTY_LICENSES": b"stand-in THIRD_PARTY_LICENSES\n",
            "soci": Path(soci).resolve().read_bytes(),
            "soci-snapshotter-grpc": b"#!/bin/sh\necho stand-in soci-snapshotter-grpc\n",
        }
    )
    (docroot / ASSET).write_bytes(official)
    # A well-formed tar.gz, but soci is one directory down: not the official layout.
    nested = make_tarball({"release/soci": Path(soci).resolve().read_bytes()})
    (docroot / "nested.tar.gz").write_bytes(nested)
    server = ReleaseServer("", hashlib.sha256(official).hexdigest(), hashlib.sha256(nested).hexdigest())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(docroot), **kwargs)

        def do_GET(self) -> None:
            server.requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def unpinned(pins: str) -> str:
    """pins.env with no release checksum pinned (the SOCI_RELEASE_SHA256_<ARCH> values of the placeholder)."""
    lines = []
    for line in pins.splitlines():
        key = line.split("=", 1)[0]
        if key.startswith("SOCI_RELEASE_SHA256_"):
            line = f"{key}=UNPINNED-placeholder"
        lines.append(line)
    return "\n".join(lines) + "\n"


def copy_sources(destination: Path, names: Sequence[str] = RUNTIME_SOURCES) -> Path:
    """A copy of the checkout's ``names`` (without caches), with pins.env's release checksums unpinned: every
    test says which checksum it means (SOCI_RELEASE_SHA256), whatever pins.env holds."""
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in names:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, destination / name, ignore=ignore, symlinks=True)
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, destination / name)
    pins = destination / "wrapper" / "pins.env"
    if pins.exists():
        pins.write_text(unpinned(pins.read_text()))
    return destination


def script_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment without the caller's soci and release settings, with a home and install directory of
    the test's own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SOCI_RELEASE_", "SOCI_BIN", "SOCI_WRAPPER_", "SOCI_SOURCE", "VIRTUAL_ENV"))
    }
    # pip's cache stays the caller's (a home of its own would start it empty).
    pip_cache = env.get("PIP_CACHE_DIR") or str(
        Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"
    )
    env.update(
        HOME=str(tmp_path / "home"),
        SOCI_RELEASE_DIR=str(tmp_path / "installs"),
        PIP_CACHE_DIR=pip_cache,
        **overrides,
    )
    return env


def installed(tmp_path: Path) -> list[str]:
    """The soci releases install-soci-release.sh installed for the test (script_env's SOCI_RELEASE_DIR)."""
    root = tmp_path / "installs"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def soci_version(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout


@dataclass
class PhaseRun:
    status: int
    stdout: str
    stderr: str


def run_phases(
    src: Path,
    buildspec: dict[str, Any],
    phases: Sequence[str],
    env: dict[str, str],
    *,
    only: str = "",
    timeout: float = 600,
) -> PhaseRun:
    """Runs buildspec phases' commands the way CodeBuild does: one shell (env.shell) for all of them, from the
    source directory, with the buildspec's variables, stopping at the first command that exits non-zero (its
    status is returned). ``only``: just the commands that contain it. At the end the shell writes the SOCI_BIN
    and PATH the later phases would see into phase-soci-bin and phase-path."""
    shell = buildspec.get("env", {}).get("shell", "sh")
    script = [f"cd {shlex.quote(str(src))}"]
    for phase in phases:
        for i, command in enumerate(buildspec["phases"][phase]["commands"]):
            if only not in command:
                continue
            script.append(command.rstrip("\n"))
            script.append(
                f'__rc=$?; if [ "$__rc" -ne 0 ]; then echo "{phase} command {i} failed" >&2; exit "$__rc"; fi'
            )
    script.append(
        'printf "%s\\n" "${SOCI_BIN-<unset>}" > phase-soci-bin; printf "%s\\n" "$PATH" > phase-path'
    )
    variables = {k: str(v) for k, v in buildspec.get("env", {}).get("variables", {}).items()}
    result = subprocess.run(
        [shell, "-c", "\n".join(script)],
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return PhaseRun(result.returncode, result.stdout, result.stderr)

"""scripts/install-soci-release.sh and the install phases that use it (buildspec.yml, and the inline buildspec
of deploy/'s CodeBuild project), against a tarball laid out like the official soci-snapshotter release asset
(soci, soci-snapshotter-grpc, NOTICE.md and THIRD_PARTY_LICENSES at its top level) made from the real soci
v0.15.0 that bootstrap built, served over HTTP on 127.0.0.1."""

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.cfn import Stack, load_template
from wrapper.core.pins import pin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "scripts/install-soci-release.sh"
VERSION = pin("SOCI_VERSION")
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, os.uname().machine)
ASSET = f"soci-snapshotter-{VERSION.removeprefix('v')}-linux-{ARCH}.tar.gz"
WRONG_SHA256 = "0" * 64
PLACEHOLDER_PINS = (
    f"SOCI_VERSION={VERSION}\nSOCI_RELEASE_SHA256_AMD64=UNPINNED\nSOCI_RELEASE_SHA256_ARM64=UNPINNED\n"
)


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


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, soci_bin: str) -> Iterator[ReleaseServer]:
    """The official asset's layout, with the real soci; a stand-in daemon (nothing here runs it)."""
    docroot = tmp_path_factory.mktemp("release")
    official = make_tarball(
        {
            "NOTICE.md": b"stand-in NOTICE.md\n",
            "THIRD_PARTY_LICENSES": b"stand-in THIRD_PARTY_LICENSES\n",
            "soci": Path(soci_bin).resolve().read_bytes(),
            "soci-snapshotter-grpc": b"#!/bin/sh\necho stand-in soci-snapshotter-grpc\n",
        }
    )
    (docroot / ASSET).write_bytes(official)
    # A well-formed tar.gz, but soci is one directory down: not the official layout.
    nested = make_tarball({"release/soci": Path(soci_bin).resolve().read_bytes()})
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


def checkout(tmp_path: Path, pins: str | None = None) -> Path:
    """A source tree with what the install phases use: the script, pins.env (the real one unless given) and
    a stand-in scripts/bootstrap.sh that records the SOCI_BIN it was given (the real one installs packages)."""
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "wrapper").mkdir()
    shutil.copy2(ROOT / SCRIPT, src / SCRIPT)
    (src / "wrapper" / "pins.env").write_text(pins or (ROOT / "wrapper" / "pins.env").read_text())
    bootstrap = src / "scripts" / "bootstrap.sh"
    bootstrap.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        'printf "%s\\n" "${SOCI_BIN-<unset>}" > bootstrap-saw-soci-bin\n'
        'if [[ -n "${SOCI_BIN:-}" ]]; then "$SOCI_BIN" --version > bootstrap-saw-version; fi\n'
    )
    bootstrap.chmod(0o755)
    return src


def script_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOCI_RELEASE_", "SOCI_BIN"))}
    env.update(HOME=str(tmp_path / "home"), SOCI_RELEASE_DIR=str(tmp_path / "installs"), **overrides)
    return env


def run_script(src: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(src / SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def installed(tmp_path: Path) -> list[str]:
    root = tmp_path / "installs"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def soci_version(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout


# -- the script ----------------------------------------------------------------------------------------------
def test_installs_the_verified_release(tmp_path: Path, release: ReleaseServer) -> None:
    src = checkout(tmp_path)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=release.sha256)
    result = run_script(src, env)
    assert result.returncode == 0, result.stderr
    soci = result.stdout.strip()
    assert result.stdout == soci + "\n"  # stdout is the path, nothing else
    assert Path(soci).parent.parent == tmp_path / "installs"
    assert f" {VERSION} " in soci_version(soci)
    assert (Path(soci).parent / "soci-snapshotter-grpc").is_file()
    assert "sha256 verified" in result.stderr
    assert installed(tmp_path) == [Path(soci).parent.name]  # no temporary files left

    # Again: the same install, without downloading.
    before = len(release.requests)
    again = run_script(src, env)
    assert again.returncode == 0 and again.stdout == result.stdout
    assert len(release.requests) == before


def test_wrong_checksum_is_refused_and_nothing_installed(tmp_path: Path, release: ReleaseServer) -> None:
    src = checkout(tmp_path)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=WRONG_SHA256)
    result = run_script(src, env)
    assert result.returncode == 3
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "refused" in line and release.sha256 in line and WRONG_SHA256 in line
    assert installed(tmp_path) == []


def test_tarball_without_soci_at_top_level_is_refused(tmp_path: Path, release: ReleaseServer) -> None:
    env = script_env(
        tmp_path,
        SOCI_RELEASE_URL=f"{release.base_url}/nested.tar.gz",
        SOCI_RELEASE_SHA256=release.nested_sha256,
    )
    result = run_script(checkout(tmp_path), env)
    assert result.returncode == 3, result.stderr
    assert "no soci" in result.stderr and installed(tmp_path) == []


@pytest.mark.parametrize("case", ["unpinned", "download fails"])
def test_unavailable_route_exits_2_without_installing(
    tmp_path: Path, release: ReleaseServer, case: str
) -> None:
    if case == "unpinned":  # pins.env with the placeholder, no override
        src = checkout(tmp_path, PLACEHOLDER_PINS)
        env = script_env(tmp_path, SOCI_RELEASE_URL=release.url)
    else:
        src = checkout(tmp_path)
        env = script_env(
            tmp_path,
            SOCI_RELEASE_URL=f"{release.base_url}/missing.tar.gz",
            SOCI_RELEASE_SHA256=release.sha256,
        )
    result = run_script(src, env)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert installed(tmp_path) == []


def uname_as(tmp_path: Path, machine: str) -> str:
    """A PATH whose ``uname -m`` says ``machine`` (the script picks the asset and the pin by it)."""
    shim = tmp_path / "uname-shim"
    shim.mkdir(exist_ok=True)
    real = shutil.which("uname")
    assert real is not None
    (shim / "uname").write_text(
        f'#!/bin/sh\nif [ "$1" = -m ]; then echo {machine}; else exec {real} "$@"; fi\n'
    )
    (shim / "uname").chmod(0o755)
    return f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.parametrize(("arch", "machine"), [("AMD64", "x86_64"), ("ARM64", "aarch64")])
def test_the_pinned_release_checksums_decide_what_the_script_does(
    tmp_path: Path, release: ReleaseServer, arch: str, machine: str
) -> None:
    """With the real pins.env and no override: a placeholder pin (not a sha256) is the documented "release
    route unavailable" (exit 2, one line naming the pin, nothing downloaded or installed); a pinned sha256 is
    checked, so the stand-in tarball served here (not the published asset) is refused (exit 3)."""
    value = pin(f"SOCI_RELEASE_SHA256_{arch}")
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, PATH=uname_as(tmp_path, machine))
    before = len(release.requests)
    result = run_script(checkout(tmp_path), env)
    assert result.stdout == "" and installed(tmp_path) == []
    (line,) = result.stderr.splitlines()
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        assert result.returncode == 3, result.stderr
        assert "refused" in line and value in line and release.sha256 in line
    else:
        assert value.startswith("UNPINNED"), (
            f"SOCI_RELEASE_SHA256_{arch}={value}: neither a sha256 nor a placeholder"
        )
        assert result.returncode == 2, result.stderr
        assert (
            f"no sha256 pinned for soci-snapshotter-{VERSION.removeprefix('v')}-linux-{arch.lower()}" in line
        )
        assert f"SOCI_RELEASE_SHA256_{arch}" in line and value in line
        assert len(release.requests) == before  # refused before any download


@pytest.mark.parametrize("right", [True, False])
def test_a_checksum_pinned_in_pins_env_is_checked(
    tmp_path: Path, release: ReleaseServer, right: bool
) -> None:
    """Once pins.env holds a sha256 (no SOCI_RELEASE_SHA256 override), the download must match it."""
    sha = release.sha256 if right else WRONG_SHA256
    pins = PLACEHOLDER_PINS.replace(
        f"SOCI_RELEASE_SHA256_{ARCH.upper()}=UNPINNED", f"SOCI_RELEASE_SHA256_{ARCH.upper()}={sha}"
    )
    assert sha in pins
    result = run_script(checkout(tmp_path, pins), script_env(tmp_path, SOCI_RELEASE_URL=release.url))
    if right:
        assert result.returncode == 0, result.stderr
        assert "sha256 verified" in result.stderr and f" {VERSION} " in soci_version(result.stdout.strip())
        assert installed(tmp_path) == [Path(result.stdout.strip()).parent.name]
    else:
        assert result.returncode == 3 and result.stdout == "" and installed(tmp_path) == []
        (line,) = result.stderr.splitlines()
        assert "refused" in line and WRONG_SHA256 in line and release.sha256 in line


# -- the install phases that use it ------------------------------------------------------------------------------
def run_phase(src: Path, buildspec: dict[str, Any], phase: str, env: dict[str, str], only: str = "") -> int:
    """Runs a buildspec phase's commands the way CodeBuild does: one shell (env.shell) for all of them, from
    the source directory, stopping at the first command that exits non-zero; returns that exit status."""
    shell = buildspec.get("env", {}).get("shell", "sh")
    script = [f"cd {shlex.quote(str(src))}"]
    for i, command in enumerate(buildspec["phases"][phase]["commands"]):
        if only not in command:
            continue
        script.append(command.rstrip("\n"))
        script.append(f'__rc=$?; if [ "$__rc" -ne 0 ]; then echo "command {i} failed" >&2; exit "$__rc"; fi')
    script.append('printf "%s\\n" "${SOCI_BIN-<unset>}" > phase-soci-bin')
    variables = {k: str(v) for k, v in buildspec.get("env", {}).get("variables", {}).items()}
    result = subprocess.run([shell, "-c", "\n".join(script)], env={**env, **variables}, timeout=120)
    return result.returncode


@pytest.fixture(scope="module")
def buildspec() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_buildspec_installs_the_release_into_soci_bin(
    tmp_path: Path, release: ReleaseServer, buildspec: dict[str, Any]
) -> None:
    src = checkout(tmp_path)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=release.sha256)
    assert run_phase(src, buildspec, "install", env) == 0
    soci = (src / "bootstrap-saw-soci-bin").read_text().strip()
    assert Path(soci).parent.parent == tmp_path / "installs"
    assert f" {VERSION} " in (src / "bootstrap-saw-version").read_text()
    assert (src / "phase-soci-bin").read_text().strip() == soci  # exported for the later phases


@pytest.mark.parametrize("case", ["unpinned", "download fails"])
def test_buildspec_falls_back_to_bootstrap_when_the_release_is_unavailable(
    tmp_path: Path, release: ReleaseServer, buildspec: dict[str, Any], case: str
) -> None:
    if case == "unpinned":
        src = checkout(tmp_path, PLACEHOLDER_PINS)
        env = script_env(tmp_path, SOCI_RELEASE_URL=release.url)
    else:
        src = checkout(tmp_path)
        env = script_env(
            tmp_path,
            SOCI_RELEASE_URL=f"{release.base_url}/missing.tar.gz",
            SOCI_RELEASE_SHA256=release.sha256,
        )
    assert run_phase(src, buildspec, "install", env) == 0
    assert (src / "bootstrap-saw-soci-bin").read_text().strip() == "<unset>"  # bootstrap picks its own route
    assert installed(tmp_path) == []


def test_buildspec_fails_on_a_wrong_checksum(
    tmp_path: Path, release: ReleaseServer, buildspec: dict[str, Any]
) -> None:
    src = checkout(tmp_path)
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, SOCI_RELEASE_SHA256=WRONG_SHA256)
    assert run_phase(src, buildspec, "install", env) != 0
    assert not (src / "bootstrap-saw-soci-bin").exists()
    assert installed(tmp_path) == []


@pytest.mark.parametrize("right_checksum", [True, False])
def test_deploy_project_installs_the_release(
    tmp_path: Path, release: ReleaseServer, right_checksum: bool
) -> None:
    """The CodeBuild project of deploy/: its soci install line (the others install containerd and pip
    packages), with the checksum the template's SociReleaseSha256 parameter passes in."""
    template = load_template(ROOT / "deploy" / "soci-index-on-push.yaml")
    sha = release.sha256 if right_checksum else WRONG_SHA256
    stack = Stack(
        template, {"SourceLocation": "https://example.invalid/soci-wrapper.git", "SociReleaseSha256": sha}
    )
    project = stack.resolve(stack.resource("Project")["Properties"])
    project_env = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert project_env["SOCI_RELEASE_SHA256"] == sha
    spec = yaml.safe_load(project["Source"]["BuildSpec"])
    src = checkout(tmp_path, PLACEHOLDER_PINS)  # the parameter, not pins.env, carries the checksum
    env = script_env(tmp_path, SOCI_RELEASE_URL=release.url, **project_env)
    status = run_phase(src, spec, "install", env, only="install-soci-release.sh")
    if right_checksum:
        assert status == 0
        soci = (src / "phase-soci-bin").read_text().strip()
        assert f" {VERSION} " in soci_version(soci)
    else:
        assert status != 0 and installed(tmp_path) == []

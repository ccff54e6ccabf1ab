"""The seed command against a fake ECR, in private mount and network namespaces (as root).

Each test runs tests/e2e/ecr_driver.py under ``unshare -mn --propagation private``: there the real ECR host
name ``123456789012.dkr.ecr.eu-west-1.amazonaws.com`` resolves to 127.0.0.1 (a bind-mounted /etc/hosts),
a TLS + htpasswd docker-registry listens on 127.0.0.1:443, and moto answers ``ecr:GetAuthorizationToken``.
So the CLI runs with exactly the seed's flags (no endpoint overrides, no port in the reference) and nothing
outside the namespaces changes. The driver prints one JSON object describing what happened; the tests
assert on it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.deps import unavailable
from wrapper.core.errors import ExitCode
from wrapper.core.models import (
    OCI_INDEX,
    OCI_MANIFEST,
    SOCI_INDEX_V1,
    SOCI_LAYER_DIGEST_ANNOTATION,
    SOCI_ZTOC,
)

ROOT = Path(__file__).resolve().parents[2]
DRIVER_TIMEOUT = 270.0


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _host_state() -> dict[str, Any]:
    """What the namespaces must leave alone: /etc/hosts and port 443 of the host's loopback."""
    return {"hosts": Path("/etc/hosts").read_bytes(), "port_443_open": _port_open(443)}


def run_driver(tmp_path: Path, scenario: str, soci_bin: str | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        unavailable("needs root: creates mount and network namespaces (unshare -mn)")
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("mount", "mount")):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is not installed (Debian package {package}); it is needed to isolate the test"
            )
    before = _host_state()
    argv = [
        "unshare",
        "-mn",
        "--propagation",
        "private",
        sys.executable,
        "-m",
        "tests.e2e.ecr_driver",
        "--scenario",
        scenario,
        "--dir",
        str(tmp_path / "run"),
        "--outer-netns",
        os.readlink("/proc/self/ns/net"),
        "--outer-mntns",
        os.readlink("/proc/self/ns/mnt"),
    ]
    if soci_bin:
        argv += ["--soci-bin", str(Path(soci_bin).resolve())]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the driver unwinds on SIGTERM and stops what it started
        try:
            stdout, stderr = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"the driver did not finish within {DRIVER_TIMEOUT:.0f} s; stderr:\n{stderr[-4000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        pytest.fail(
            f"the driver printed no result (exit {proc.returncode}); stderr:\n{stderr[-4000:]}\n"
            f"stdout:\n{stdout[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    if "driver_error" in result:
        pytest.fail(
            f"driver failed: {result['driver_error']}\n{result.get('driver_traceback', '')}\n"
            f"driver stderr:\n{stderr[-3000:]}"
        )
    # Nothing outside the namespaces changed.
    assert _host_state() == before, "the host's /etc/hosts or port 443 changed"
    assert result["ecr_host_resolves_to"] == "127.0.0.1"
    return result


def _describe(result: dict[str, Any]) -> str:
    """The CLI's outcome, for assertion messages."""
    return (
        f"exit {result['exit_code']} after {result['cli_seconds']} s\nstdout:\n{result['stdout']}\n"
        f"stderr tail:\n{result['stderr_tail']}\nregistry log tail:\n{result.get('registry_log_tail', '')}"
    )


def _assert_used_moto_token(result: dict[str, Any]) -> None:
    """The registry accepts only its htpasswd users; the CLI ran with an empty DOCKER_CONFIG and no
    --username, so the only credentials it had were the ECR token moto issued (AWS:<password>)."""
    assert result["moto_calls_during_cli"] >= 1, "the CLI never asked moto for an ECR token"
    auth = result["registry_auth_during_cli"]
    assert auth["authorized"] >= 1, f"no authenticated registry request: {auth}\n{_describe(result)}"


def _assert_no_leaks_or_leftovers(result: dict[str, Any]) -> None:
    watcher = result["watcher"]
    assert watcher["canary_seen"], f"the argv watcher never saw its own canary process: {watcher}"
    assert watcher["scans"] > 10, watcher
    assert not watcher["errors"], watcher
    assert result["argv_leaks"] == [], f"the registry password appeared in argv: {result['argv_leaks']}"
    assert result["leftover_containerd"] == [], result["leftover_containerd"]
    assert result["leftover_processes"] == [], result["leftover_processes"]
    assert result["leftover_after_stop"] == [], result["leftover_after_stop"]
    assert result["work_dir_entries"] == [], f"work directory not cleaned up: {result['work_dir_entries']}"
    assert result["tmp_dir_entries"] == [], f"temporary files left behind: {result['tmp_dir_entries']}"


@pytest.mark.soci
def test_seed_flags_against_ecr_already_indexed(tmp_path: Path, soci_bin: str) -> None:
    result = run_driver(tmp_path, "already-indexed", soci_bin=soci_bin)
    assert not result["timed_out"], _describe(result)
    assert result["exit_code"] == 0, _describe(result)
    assert not result["stderr_has_traceback"], _describe(result)
    report = result["stdout_json"]
    assert report is not None, _describe(result)
    image = result["image"]
    assert report["status"] == "already-indexed", _describe(result)
    assert report["digest"] == image["digest"]
    assert report["image"] == f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@{image['digest']}"
    assert report["soci_version"] == "V1"
    assert [i["soci_index_digest"] for i in report["indexes"]] == [result["preexisting_index"]]
    assert [i["manifest_digest"] for i in report["indexes"]] == [image["digest"]]
    _assert_used_moto_token(result)
    _assert_no_leaks_or_leftovers(result)
    # soci and containerd were checked but not run: nothing was started, no run directory was made.
    assert "containerd" not in report["stages"] and "pull" not in report["stages"], report["stages"]
    assert result["started_under_work_dir"] == [], result["started_under_work_dir"]
    # The registry still holds exactly the index that was there.
    assert [r["digest"] for r in result["registry"]["referrers"]] == [result["preexisting_index"]]


@pytest.mark.soci
def test_seed_flags_against_ecr_without_ca_file_fails_cleanly(tmp_path: Path, soci_bin: str) -> None:
    """Without --ca-file the registry's certificate is not trusted: one line, exit code 5, no traceback."""
    result = run_driver(tmp_path, "no-ca", soci_bin=soci_bin)
    assert not result["timed_out"], _describe(result)
    assert result["exit_code"] == ExitCode.REGISTRY, _describe(result)
    assert not result["stderr_has_traceback"], _describe(result)
    errors = [ln for ln in result["stderr_tail"].splitlines() if ln.startswith("soci-wrapper: error:")]
    assert len(errors) == 1, _describe(result)
    assert "certificate" in errors[0].lower() or "ssl" in errors[0].lower(), errors[0]
    assert result["stdout_json"] == {"error": errors[0].removeprefix("soci-wrapper: error: "), "exit_code": 5}
    assert result["cli_seconds"] < 60, "a certificate error must not be retried for long"
    _assert_no_leaks_or_leftovers(result)


@pytest.mark.soci
def test_seed_flags_against_ecr_end_to_end(tmp_path: Path, soci_bin: str) -> None:
    result = run_driver(tmp_path, "end-to-end", soci_bin=soci_bin)
    assert not result["timed_out"], _describe(result)
    assert result["exit_code"] == 0, _describe(result)
    assert not result["stderr_has_traceback"], _describe(result)
    report = result["stdout_json"]
    assert report is not None, _describe(result)
    image = result["image"]
    assert report["status"] == "indexed", _describe(result)
    assert report["digest"] == image["digest"]
    assert report["soci_version"] == "V1"
    _assert_used_moto_token(result)

    # The registry holds one SOCI index v1 for the image, reachable through the referrers tag.
    referrers = result["registry"]["referrers"]
    assert len(referrers) == 1, result["registry"]
    index = referrers[0]
    doc = index["manifest"]
    assert index["artifact_type"] == SOCI_INDEX_V1
    assert doc["mediaType"] == OCI_MANIFEST
    assert doc.get("artifactType", doc["config"]["mediaType"]) == SOCI_INDEX_V1
    assert doc["config"]["mediaType"] == SOCI_INDEX_V1
    assert doc["subject"]["digest"] == image["digest"]
    assert doc["subject"]["size"] == image["size"]
    assert [layer["mediaType"] for layer in doc["layers"]] == [SOCI_ZTOC]
    assert [layer["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for layer in doc["layers"]] == [
        image["big_layer"]
    ]
    tag_index = result["registry"]["referrers_tag"]
    assert tag_index is not None and tag_index.get("mediaType", OCI_INDEX) == OCI_INDEX
    assert index["digest"] in [m["digest"] for m in tag_index["manifests"]]

    # The report names that index and says what it covers.
    assert [i["soci_index_digest"] for i in report["indexes"]] == [index["digest"]]
    (entry,) = report["indexes"]
    assert entry["manifest_digest"] == image["digest"]
    assert entry["ztocs"] == 1
    assert [x["digest"] for x in entry["layers_indexed"]] == [image["big_layer"]]
    assert [x["digest"] for x in entry["layers_skipped"]] == [image["small_layer"]]
    assert report["work_dir"] is None

    # The watcher saw our containerd and soci's create and push (so its silence about the password covers
    # them): soci push got its credentials through DOCKER_CONFIG, and no argv ever held the password.
    started = result["started_under_work_dir"]
    assert any(p["program"] == "containerd" for p in started), started
    assert {"create", "push"} <= set(_soci_subcommands(started, soci_bin)), started
    _assert_no_leaks_or_leftovers(result)


def _soci_subcommands(started: list[dict[str, Any]], soci_bin: str) -> list[str]:
    """``create``, ``push``... from soci argvs: ``soci --address A --namespace N --root R --content-store
    containerd [--debug] SUBCOMMAND ...`` (see wrapper.soci.runner.Soci.argv)."""
    names = {Path(soci_bin).name, Path(soci_bin).resolve().name}
    out = []
    for proc in started:
        argv = proc["argv"]
        if proc["program"] not in names or "--content-store" not in argv:
            continue
        rest = [a for a in argv[argv.index("--content-store") + 2 :] if a != "--debug"]
        if rest:
            out.append(rest[0])
    return out

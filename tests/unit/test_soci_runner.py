"""The soci runner's own logic: failure classification (typed errors), argv, the private DOCKER_CONFIG.

These need no soci: they test how soci-wrapper calls it and reads its failures. End-to-end tests with the real
binary live in tests/e2e.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import processes
from wrapper.core.errors import (
    AuthError,
    ContainerdError,
    ExitCode,
    MissingDependencyError,
    NotFoundError,
    NothingToIndexError,
    RegistryError,
    SociError,
)
from wrapper.core.models import Platform
from wrapper.registry.dockerconfig import PrivateDockerConfig
from wrapper.soci.failures import classify_failure
from wrapper.soci.runner import PushAuth, Soci


def make(tmp_path: Path, binary: str = "/nonexistent/soci") -> Soci:
    return Soci(
        binary=binary, address="/run/x.sock", namespace="ns", root=tmp_path / "root", tmp_dir=tmp_path / "t"
    )


def test_argv_carries_isolation_flags(tmp_path: Path) -> None:
    argv = make(tmp_path).argv(["create", "img"])
    assert argv[:9] == [
        "/nonexistent/soci",
        "--address",
        "/run/x.sock",
        "--namespace",
        "ns",
        "--root",
        str(tmp_path / "root"),
        "--content-store",
        "containerd",
    ]
    assert argv[-2:] == ["create", "img"]


def test_no_ztocs_is_nothing_to_index() -> None:
    err = classify_failure(
        "soci create",
        1,
        "soci: no ztocs created, all layers either skipped or produced errors\n",
        min_layer_size=1024,
    )
    assert isinstance(err, NothingToIndexError)
    assert err.exit_code == ExitCode.NOTHING_TO_INDEX
    assert "1024 bytes" in str(err) and "--min-layer-size" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("stderr", "code"),
    [
        ("soci: error pushing graph to remote: ... 401 Unauthorized", ExitCode.AUTH),
        (
            'soci: failed to do request: Head "https://r/v2/": dial tcp 127.0.0.1:1: connection refused',
            ExitCode.REGISTRY,
        ),
        ("soci: something odd happened", ExitCode.SOCI),
        ("soci: denied: requested access to the resource is denied", ExitCode.AUTH),
        (
            'soci: failed to dial "/run/c.sock": connection error: desc = "transport: error while dialing: '
            'dial unix /run/c.sock: connect: permission denied"',
            ExitCode.CONTAINERD,
        ),
        ("soci: open /tmp/x/ztoc: permission denied", ExitCode.SOCI),
    ],
)
def test_failures_keep_a_specific_exit_code(stderr: str, code: int) -> None:
    err = classify_failure("soci push", 1, "noise\n" + stderr)
    assert isinstance(err, SociError)
    assert err.exit_code == code
    assert err.detail is not None and stderr in err.detail
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("stderr", "kind", "words"),
    [
        (
            'soci: PUT "https://r/v2/a/manifests/sha256:1": response status code 401: unauthorized: '
            "authentication required",
            AuthError,
            "refused the credentials",
        ),
        ("soci: denied: requested access to the resource is denied", AuthError, "refused the credentials"),
        (
            'soci: Head "https://r/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
            RegistryError,
            "cannot reach the registry",
        ),
        (
            'soci: PUT "https://r/v2/a/manifests/sha256:1": response status code 400: manifest invalid: x',
            RegistryError,
            "does not accept SOCI index manifest v1",
        ),
        (
            'soci: failed to dial "/run/c.sock": context deadline exceeded: dial unix /run/c.sock: connect: '
            "no such file or directory",
            ContainerdError,
            "cannot reach containerd",
        ),
        ('soci: image "reg/app:1": not found', NotFoundError, "not found"),
    ],
)
def test_soci_failures_keep_their_type(stderr: str, kind: type[SociError], words: str) -> None:
    """``except AuthError`` (and the others) catches soci's failures of that kind: the type, its exit code and
    soci's words survive the soci boundary; they are SociErrors too, so the runner's callers still see them."""
    err = classify_failure("soci push", 1, "noise\n" + stderr)
    assert isinstance(err, kind) and isinstance(err, SociError)
    assert err.exit_code == kind.exit_code
    assert words in err.message, err.message
    with pytest.raises(kind):
        raise err


def test_other_soci_failures_are_soci_errors() -> None:
    err = classify_failure("soci create", 1, "soci: something odd happened\n")
    assert type(err) is SociError and err.exit_code == ExitCode.SOCI
    assert not isinstance(err, (AuthError, RegistryError, ContainerdError, NotFoundError))


def test_a_typed_failure_keeps_its_type_through_the_push_retries(tmp_path: Path) -> None:
    """A stand-in soci that fails with a 401: the runner raises AuthError (exit 3), after one attempt (a
    permanent failure is not tried again)."""
    script = tmp_path / "fake-soci"
    count = tmp_path / "count"
    script.write_text(
        "#!/bin/sh\n"
        f"echo x >> {count}\n"
        'echo \'soci: failed to push: PUT "http://r/v2/a/blobs/uploads/": response status code 401: '
        "unauthorized' >&2\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    with pytest.raises(AuthError) as raised:
        make(tmp_path, str(script)).push("r/a@sha256:" + "a" * 64, PushAuth("r", "u", "p"))
    assert raised.value.exit_code == ExitCode.AUTH
    assert "soci push: the registry refused the credentials" in raised.value.message
    assert count.read_text().count("x") == 1


def test_missing_binary_is_a_missing_dependency(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError) as info:
        make(tmp_path).create("img")
    assert info.value.exit_code == ExitCode.MISSING_DEPENDENCY
    assert "/nonexistent/soci" in str(info.value)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
    return fields[0], int(fields[2])


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies waiting for a reaper do not count)."""
    return [p.pid for p in processes(group=pgid)]


def test_runner_stops_a_call_that_times_out(tmp_path: Path) -> None:
    """A soci call past its timeout is stopped with everything it started (its whole process group)."""
    pids = tmp_path / "pids"
    script = tmp_path / "slow"
    # A shell starts at once: its background sleep (a grandchild of the runner, in the shell's process group
    # since a script has no job control) is running well before the timeout.
    script.write_text(
        "#!/bin/sh\n"
        "sleep 60 &\n"
        f"echo \"$$ $! $(cut -d' ' -f5 /proc/$!/stat)\" > {pids}.tmp\n"
        f"mv {pids}.tmp {pids}\n"
        "wait\n"
    )
    script.chmod(0o755)
    runner = make(tmp_path, str(script))
    runner.timeout = 1.0
    try:
        with pytest.raises(SociError, match="did not finish"):
            runner.create("img")
        assert pids.exists(), "the stand-in soci never started its grandchild"
        soci_pid, grandchild_pid, grandchild_pgid = map(int, pids.read_text().split())
        # soci runs in a session (and so a process group) of its own, which its grandchild shares
        assert grandchild_pgid == soci_pid
        deadline = time.monotonic() + 10
        while _live_group_members(soci_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _live_group_members(soci_pid) == []
        assert _proc_stat(soci_pid) is None  # stopped and reaped, not left as a zombie
        grandchild = _proc_stat(grandchild_pid)
        assert grandchild is None or grandchild[0] == "Z", grandchild
    finally:  # whatever the outcome, leave nothing of the stand-in running
        if pids.exists():
            for pid in _live_group_members(int(pids.read_text().split()[0])):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_push_environment_is_private_and_removed(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nxyz\n-----END CERTIFICATE-----\n")
    auth = PushAuth(host="reg.example:5000", username="AWS", password="s3cret-token", ca_file=str(ca))
    assert "s3cret-token" not in repr(auth)
    with PrivateDockerConfig(
        auth.host, auth.username, auth.password, ca_file=auth.ca_file, parent=tmp_path
    ) as env:
        cfg_dir = Path(env["DOCKER_CONFIG"])
        cfg = cfg_dir / "config.json"
        assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
        assert stat.S_IMODE(cfg_dir.stat().st_mode) == 0o700
        data = json.loads(cfg.read_text())
        assert "reg.example:5000" in data["auths"]
        bundle = Path(env["SSL_CERT_FILE"]).read_text()
        assert bundle.rstrip().endswith("-----END CERTIFICATE-----")
        assert "xyz" in bundle
    assert not cfg_dir.exists()


def test_push_never_puts_the_password_in_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """soci push gets credentials through DOCKER_CONFIG: record the argv and env a stand-in script sees."""
    outer = tmp_path / "outer-docker-config"  # the caller's own DOCKER_CONFIG must not be what soci gets
    monkeypatch.setenv("DOCKER_CONFIG", str(outer))
    seen = tmp_path / "seen.json"
    script = tmp_path / "fake-soci"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, stat, sys\n"
        "d = os.environ['DOCKER_CONFIG']\n"
        "c = os.path.join(d, 'config.json')\n"
        "json.dump({'argv': sys.argv, 'docker_config': d, 'cfg': open(c).read(),\n"
        "           'dir_mode': stat.S_IMODE(os.stat(d).st_mode), 'cfg_mode': stat.S_IMODE(os.stat(c).st_mode),\n"
        "           'env': dict(os.environ)},\n"
        f"          open({str(seen)!r}, 'w'))\n"
    )
    script.chmod(0o755)
    runner = make(tmp_path, str(script))
    runner.push(
        "reg.example/app@sha256:" + "a" * 64,
        PushAuth("reg.example", "u", "pa55word", plain_http=True),
        platforms=[Platform("linux", "amd64")],
    )
    data = json.loads(seen.read_text())
    assert not any("pa55word" in a for a in data["argv"]), data["argv"]
    assert not any("pa55word" in v for v in data["env"].values())  # not in any variable either
    assert "--user" not in data["argv"] and "--plain-http" in data["argv"]
    # soci's DOCKER_CONFIG was a private directory of the run (0700, config.json 0600), gone afterwards
    docker_config = Path(data["docker_config"])
    assert docker_config != outer
    assert docker_config.parent == tmp_path / "t" and docker_config.name.startswith("soci-auth-")
    assert (data["dir_mode"], data["cfg_mode"]) == (0o700, 0o600)
    assert not docker_config.exists()
    assert not any(p.name.startswith("soci-auth-") for p in (tmp_path / "t").iterdir())
    # ... and its config.json held exactly the user and password, as docker's base64 "user:password"
    auths = json.loads(data["cfg"])["auths"]
    assert list(auths) == ["reg.example"]
    assert base64.b64decode(auths["reg.example"]["auth"], validate=True).decode() == "u:pa55word"


def test_identity_tokens_are_refused_for_soci_push() -> None:
    """soci push only knows user and password: a docker identity token would be sent as a user name."""
    from wrapper.core.errors import AuthError
    from wrapper.core.reference import Reference
    from wrapper.registry.auth import Credentials, CredentialStore
    from wrapper.registry.client import RegistryClient
    from wrapper.run.pipeline import _push_auth

    ref = Reference.parse("registry.example.com/app:1")
    store = CredentialStore(explicit={"registry.example.com": Credentials("<token>", "refresh-token")})
    with RegistryClient(store) as client, pytest.raises(AuthError, match="identity token"):
        _push_auth(client, ref)
    store = CredentialStore(explicit={"registry.example.com": Credentials("user", "pw")})
    with RegistryClient(store) as client:
        auth = _push_auth(client, ref)
    assert (auth.username, auth.password, auth.plain_http) == ("user", "pw", False)


def test_a_push_racing_another_push_of_the_same_index_is_tried_again() -> None:
    """Two runs pushing one image: the registry may not have the other push's blob yet; soci push again."""
    from wrapper.soci.failures import is_transient_failure

    race = (
        'soci: error pushing graph to remote: failed to perform "Push" on destination: PUT "http://r/v2/a/manifests/'
        'sha256:21fb": response status code 400: digest invalid: provided digest did not match uploaded content; '
        "manifest blob unknown: blob unknown to registry: sha256:939b\n"
    )
    assert is_transient_failure(race)
    err = classify_failure("soci push", 1, race)
    assert err.transient and "did not have every blob" in str(err)
    assert not is_transient_failure(
        'soci: PUT "http://r/v2/a/manifests/x": response status code 400: manifest invalid'
    )


def test_a_signal_while_soci_starts_is_delivered_right_after() -> None:
    from wrapper.system.supervisor import SignalGate

    gate = SignalGate()
    held = gate.hold()
    gate.deliver(KeyboardInterrupt())  # held back: soci is starting
    with pytest.raises(KeyboardInterrupt):
        gate.release(held)  # ... and raised once it has (inside the section that stops soci on it)
    with pytest.raises(KeyboardInterrupt):
        gate.deliver(KeyboardInterrupt())  # not held: at once

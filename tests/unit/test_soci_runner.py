"""The soci runner's own logic: failure classification, argv, the private DOCKER_CONFIG.

These need no soci: they test how soci-wrapper calls it and reads its failures. End-to-end tests with the real
binary live in tests/e2e.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from wrapper.errors import ExitCode, NothingToIndexError, SociError
from wrapper.models import Platform
from wrapper.soci import PushAuth, Soci, _push_environment, classify_failure


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


def test_missing_binary_is_a_missing_dependency(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        make(tmp_path).create("img")
    assert getattr(info.value, "exit_code", None) == ExitCode.MISSING_DEPENDENCY


def test_runner_stops_a_call_that_times_out(tmp_path: Path) -> None:
    script = tmp_path / "slow"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)
    runner = make(tmp_path, str(script))
    runner.timeout = 0.5
    with pytest.raises(SociError, match="did not finish"):
        runner.create("img")


def test_push_environment_is_private_and_removed(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nxyz\n-----END CERTIFICATE-----\n")
    auth = PushAuth(host="reg.example:5000", username="AWS", password="s3cret-token", ca_file=str(ca))
    assert "s3cret-token" not in repr(auth)
    with _push_environment(auth, tmp_path) as env:
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


def test_push_never_puts_the_password_in_argv(tmp_path: Path) -> None:
    """soci push gets credentials through DOCKER_CONFIG: record the argv and env a stand-in script sees."""
    seen = tmp_path / "seen.json"
    script = tmp_path / "fake-soci"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"cfg = open(os.path.join(os.environ['DOCKER_CONFIG'], 'config.json')).read()\n"
        f"json.dump({{'argv': sys.argv, 'cfg': cfg}}, open({str(seen)!r}, 'w'))\n"
    )
    script.chmod(0o755)
    runner = make(tmp_path, str(script))
    runner.push(
        "reg.example/app@sha256:" + "a" * 64,
        PushAuth("reg.example", "u", "pa55word", plain_http=True),
        platforms=[Platform("linux", "amd64")],
    )
    data = json.loads(seen.read_text())
    assert not any("pa55word" in a for a in data["argv"])
    assert "--user" not in data["argv"] and "--plain-http" in data["argv"]
    assert "auth" in data["cfg"]
    assert not any(p.name.startswith("soci-auth-") for p in (tmp_path / "t").iterdir())
    assert os.environ.get("DOCKER_CONFIG") != json.loads(seen.read_text()).get("cfg")


def test_identity_tokens_are_refused_for_soci_push() -> None:
    """soci push only knows user and password: a docker identity token would be sent as a user name."""
    from wrapper.errors import AuthError
    from wrapper.pipeline import _push_auth
    from wrapper.registry.auth import Credentials, CredentialStore
    from wrapper.registry.client import RegistryClient
    from wrapper.registry.reference import Reference

    ref = Reference.parse("registry.example.com/app:1")
    store = CredentialStore(explicit={"registry.example.com": Credentials("<token>", "refresh-token")})
    with RegistryClient(store) as client, pytest.raises(AuthError, match="identity token"):
        _push_auth(client, ref)
    store = CredentialStore(explicit={"registry.example.com": Credentials("user", "pw")})
    with RegistryClient(store) as client:
        auth = _push_auth(client, ref)
    assert (auth.username, auth.password, auth.plain_http) == ("user", "pw", False)

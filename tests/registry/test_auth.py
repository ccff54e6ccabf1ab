from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import ECR_HOST, MOTO_ECR_PASSWORD, free_port
from wrapper.core.errors import AuthError, RegistryError
from wrapper.registry.auth import Credentials, CredentialStore


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_credentials_repr_hides_password():
    creds = Credentials("alice", "s3cret-value")
    assert "s3cret-value" not in repr(creds)
    assert "alice" in repr(creds)
    store = CredentialStore(explicit={"ghcr.io": creds})
    assert "s3cret-value" not in repr(store)


def test_explicit_wins_over_config(tmp_path):
    config = write_config(tmp_path / "docker", {"auths": {"ghcr.io": {"auth": b64("bob:frompw")}}})
    store = CredentialStore(explicit={"ghcr.io": Credentials("alice", "pw")}, docker_config_dir=config)
    assert store.get("ghcr.io") == Credentials("alice", "pw")


def test_explicit_overrides_ecr_without_aws(tmp_path, monkeypatch):
    # Explicit credentials for an ECR host are used as they are: no AWS call is made.
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", f"http://127.0.0.1:{free_port()}")
    store = CredentialStore(explicit={ECR_HOST: Credentials("AWS", "tok")}, docker_config_dir=tmp_path)
    assert store.get(ECR_HOST) == Credentials("AWS", "tok")


def test_docker_config_auths(tmp_path):
    config = write_config(
        tmp_path / "docker",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")},
                "ghcr.io": {"auth": b64("gh:pw:with:colons")},
                "https://quay.io": {"username": "q", "password": "qpw"},
                "http://localhost:5000/v2/": {"auth": b64("local:lpw")},
                "id.example.com": {"identitytoken": "refresh-me"},
                "empty.example.com": {},
            }
        },
    )
    store = CredentialStore(docker_config_dir=config, use_ecr=False)
    assert store.get("docker.io") == Credentials("hubuser", "hubpw")
    assert store.get("index.docker.io") == Credentials("hubuser", "hubpw")
    assert store.get("ghcr.io") == Credentials("gh", "pw:with:colons")
    assert store.get("quay.io") == Credentials("q", "qpw")
    assert store.get("localhost:5000") == Credentials("local", "lpw")
    token = store.get("id.example.com")
    assert token is not None and token.is_identity_token and token.password == "refresh-me"
    assert store.get("empty.example.com") is None
    assert store.get("other.example.com") is None


def test_docker_config_env_var(tmp_path, monkeypatch):
    config = write_config(tmp_path / "envdocker", {"auths": {"ghcr.io": {"auth": b64("env:pw")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    assert CredentialStore().get("ghcr.io") == Credentials("env", "pw")


def test_docker_config_home_default(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write_config(tmp_path / ".docker", {"auths": {"ghcr.io": {"auth": b64("home:pw")}}})
    assert CredentialStore().get("ghcr.io") == Credentials("home", "pw")


def test_missing_config_is_anonymous(tmp_path):
    assert CredentialStore(docker_config_dir=tmp_path / "nothing").get("ghcr.io") is None


def test_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(AuthError, match="cannot read docker config"):
        CredentialStore(docker_config_dir=tmp_path).get("ghcr.io")
    write_config(tmp_path, {"auths": {"ghcr.io": {"auth": b64("no-colon")}}})
    with pytest.raises(AuthError, match=r"invalid 'auth' entry for ghcr\.io") as info:
        CredentialStore(docker_config_dir=tmp_path).get("ghcr.io")
    assert "no-colon" not in str(info.value)


@pytest.mark.parametrize("text", ["", "\n", "  \n\t"])
def test_an_empty_config_is_an_empty_configuration(tmp_path, text):
    """docker reads an empty (or blank) config.json as a configuration without credentials."""
    (tmp_path / "config.json").write_text(text)
    assert CredentialStore(docker_config_dir=tmp_path, use_ecr=False).get("ghcr.io") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", r"invalid JSON at line 1 column 2: Expecting property name"),
        ("[1, 2]", r"not a JSON object"),
        ('{"auths": {}}\n{"auths": {}}', r"invalid JSON at line 2 column 1: Extra data"),
    ],
)
def test_a_malformed_config_says_where_and_what_to_do(tmp_path, text, problem):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(AuthError, match=problem) as info:
        CredentialStore(docker_config_dir=tmp_path, use_ecr=False).get("ghcr.io")
    line = str(info.value)
    assert "\n" not in line and str(path) in line
    assert (
        info.value.hint == "fix or remove it, or point --docker-config or DOCKER_CONFIG at another directory"
    )


def test_an_unreadable_config_says_why(tmp_path):
    (tmp_path / "config.json").mkdir()  # a directory where the file should be
    with pytest.raises(AuthError) as info:
        CredentialStore(docker_config_dir=tmp_path, use_ecr=False).get("ghcr.io")
    assert re.fullmatch(r"cannot read docker config .*config\.json: Is a directory", info.value.message)
    assert info.value.hint and "fix or remove it" in info.value.hint


def test_credentials_say_where_they_came_from(tmp_path):
    config = write_config(tmp_path / "docker", {"auths": {"ghcr.io": {"auth": b64("u:pw")}}})
    explicit = {"quay.io": Credentials("alice", "pw")}
    store = CredentialStore(explicit=explicit, docker_config_dir=config, use_ecr=False)
    assert getattr(store.get("quay.io"), "source", None) == "--password-stdin"
    assert getattr(store.get("ghcr.io"), "source", None) == "docker-config"
    # ``source`` is not part of equality: the same username and password are the same credentials
    assert store.get("ghcr.io") == Credentials("u", "pw")


HELPER = textwrap.dedent(
    """\
    #!{python}
    import json, sys, os
    server = sys.stdin.read().strip()
    with open(os.environ["HELPER_LOG"], "a") as log:
        log.write(sys.argv[0].rsplit("-", 1)[1] + " " + " ".join(sys.argv[1:]) + " " + server + "\\n")
    table = {{
        "ghcr.io": ("ghuser", "gh-secret"),
        "https://index.docker.io/v1/": ("hub", "hub-secret"),
        "tok.example.com": ("<token>", "identity"),
    }}
    if server == "fail.example.com":
        print("boom: keychain locked")
        sys.exit(3)
    if server not in table:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = table[server]
    print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
    """
)


@pytest.fixture
def helper_path(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("docker-credential-testhelper", "docker-credential-teststore"):
        script = bindir / name
        script.write_text(HELPER.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "helper.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HELPER_LOG", str(log))
    return log


def test_cred_helpers_and_store(tmp_path, helper_path):
    config = write_config(
        tmp_path / "docker",
        {
            "auths": {"ghcr.io": {"auth": b64("ignored:becausehelper")}, "quay.io": {"auth": b64("q:qpw")}},
            "credHelpers": {"ghcr.io": "testhelper", "fail.example.com": "testhelper"},
            "credsStore": "teststore",
        },
    )
    store = CredentialStore(docker_config_dir=config, use_ecr=False)
    assert store.get("ghcr.io") == Credentials("ghuser", "gh-secret")  # credHelpers win over auths
    assert store.get("quay.io") == Credentials("q", "qpw")  # auths before credsStore
    assert store.get("docker.io") == Credentials("hub", "hub-secret")  # credsStore, Hub's server URL
    assert store.get("tok.example.com") == Credentials("<token>", "identity")
    assert store.get("unknown.example.com") is None  # "credentials not found" → anonymous
    assert getattr(store.get("ghcr.io"), "source", None) == "docker-credential-testhelper"
    with pytest.raises(AuthError) as info:
        store.get("fail.example.com")
    assert (
        info.value.message
        == "docker-credential-testhelper get failed for fail.example.com: boom: keychain locked"
    )
    assert info.value.hint == (
        "run `echo fail.example.com | docker-credential-testhelper get` yourself to see why, "
        "or log in again with docker login"
    )
    calls = helper_path.read_text().splitlines()
    assert calls[:3] == [
        "testhelper get ghcr.io",
        "teststore get https://index.docker.io/v1/",
        "teststore get tok.example.com",
    ]


def test_missing_helper(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    config = write_config(tmp_path / "docker", {"credsStore": "nonexistent"})
    with pytest.raises(AuthError, match="docker-credential-nonexistent is not on PATH"):
        CredentialStore(docker_config_dir=config).get("ghcr.io")


# ECR through moto ------------------------------------------------------------------------------------
def test_ecr_token_from_moto(moto_ecr, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="wrapper.registry")
    store = CredentialStore(docker_config_dir=tmp_path)
    # Count ecr:GetAuthorizationToken on the boto3 clients the store makes: API calls, and HTTP requests sent
    # (botocore's events, so retries would show as extra requests).
    calls: list[str] = []
    sent: list[str] = []
    make_client = store._boto_client

    def counting_client(service: str, region: str) -> Any:
        client = make_client(service, region)
        if not getattr(client, "_counted_by_test", False):
            client._counted_by_test = True
            client.meta.events.register(
                "before-call.ecr.GetAuthorizationToken", lambda **kw: calls.append(region)
            )
            client.meta.events.register(
                "before-send.ecr.GetAuthorizationToken", lambda request, **kw: sent.append(request.url)
            )
        return client

    monkeypatch.setattr(store, "_boto_client", counting_client)
    creds = store.get(moto_ecr.host)
    # moto's token is base64("AWS:<account>-auth-token"); the store hands out the decoded pair.
    assert creds == Credentials("AWS", MOTO_ECR_PASSWORD)
    assert calls == [moto_ecr.region]
    assert store.get(moto_ecr.host) == creds  # moto's expiresAt is in 2015, so this fetched again
    assert calls == [moto_ecr.region] * 2
    assert len(sent) == 2 and all(url.startswith(moto_ecr.endpoint) for url in sent), sent
    assert MOTO_ECR_PASSWORD not in caplog.text


def test_ecr_disabled_uses_docker_config(moto_ecr, tmp_path):
    config = write_config(tmp_path / "docker", {"auths": {moto_ecr.host: {"auth": b64("AWS:fromconfig")}}})
    assert CredentialStore(docker_config_dir=config, use_ecr=False).get(moto_ecr.host) == Credentials(
        "AWS", "fromconfig"
    )


def test_ecr_without_aws_credentials(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", f"http://127.0.0.1:{free_port()}")
    # Keep boto3 away from any container-credentials endpoint too.
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    with pytest.raises(AuthError, match=f"no AWS credentials found to log in to {ECR_HOST}"):
        CredentialStore(docker_config_dir=tmp_path).get(ECR_HOST)
    # ... but a `docker login` to that ECR host still works
    token = base64.b64encode(b"AWS:from-docker-login").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {ECR_HOST: {"auth": token}}}))
    creds = CredentialStore(docker_config_dir=tmp_path).get(ECR_HOST)
    assert creds is not None and creds.password == "from-docker-login"


def test_ecr_endpoint_unreachable(moto_ecr, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(RegistryError, match=f"cannot reach the AWS endpoint to log in to {ECR_HOST}") as info:
        CredentialStore(docker_config_dir=tmp_path).get(ECR_HOST)
    assert "\n" not in str(info.value)


def test_ecr_public_falls_back_to_anonymous(moto_ecr, tmp_path, caplog):
    # moto has no ecr-public; the failure is logged and the store falls back (pulls work anonymously).
    assert CredentialStore(docker_config_dir=tmp_path).get("public.ecr.aws") is None
    assert "no ECR Public token" in caplog.text


def test_ecr_public_token_is_decoded_and_cached(tmp_path, monkeypatch):
    """moto has no ecr-public: botocore's Stubber answers for AWS, and the store's own code does the rest."""
    import base64
    import datetime

    import boto3
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("ecr-public", region_name="us-east-1")
    stubber = Stubber(client)
    token = base64.b64encode(b"AWS:public-token-1").decode()
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=12)
    stubber.add_response(
        "get_authorization_token",
        {"authorizationData": {"authorizationToken": token, "expiresAt": expires}},
        {},
    )
    asked: list[tuple[str, str]] = []
    store = CredentialStore(docker_config_dir=tmp_path)

    def fake_client(service: str, region: str):
        asked.append((service, region))
        return client

    monkeypatch.setattr(store, "_boto_client", fake_client)
    with stubber:
        creds = store.get("public.ecr.aws")
        again = store.get("public.ecr.aws")  # cached until shortly before expiresAt: no second call
    assert creds is not None and creds.username == "AWS" and creds.password == "public-token-1"
    assert again == creds
    assert asked == [("ecr-public", "us-east-1")]
    stubber.assert_no_pending_responses()

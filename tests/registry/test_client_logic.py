"""Pure client logic (redirects, token flow, odd server answers) against a tiny local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time

import pytest

from tests.registry.stub import StubRequest, StubResponse, StubServer
from wrapper.core.errors import AuthError, RegistryError
from wrapper.core.models import OCI_MANIFEST
from wrapper.core.reference import Reference
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient

BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def make_client(tmp_path, creds: dict[str, Credentials] | None = None, **kwargs) -> RegistryClient:
    store = CredentialStore(explicit=creds, docker_config_dir=tmp_path, use_ecr=False)
    return RegistryClient(store, backoff_seconds=0.01, **kwargs)


def test_redirect_drops_authorization_and_keeps_range(tmp_path):
    with StubServer() as registry, StubServer() as storage:

        def blob(request: StubRequest) -> StubResponse:
            if request.headers.get("authorization") != basic("u", "p"):
                return StubResponse(401, {"WWW-Authenticate": 'Basic realm="stub"'})
            return StubResponse(307, {"Location": f"{storage.url}/store/blob?X-Signature=abc"})

        def serve(request: StubRequest) -> StubResponse:
            start = (
                int(request.headers["range"].split("=")[1].rstrip("-")) if "range" in request.headers else 0
            )
            if start:
                return StubResponse(
                    206, {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}, BLOB[start:]
                )
            return StubResponse(200, body=BLOB)

        registry.route("GET", f"/v2/app/blobs/{BLOB_DIGEST}", blob)
        storage.route("GET", "/store/blob", serve)
        client = make_client(tmp_path, {registry.host: Credentials("u", "p")})
        ref = Reference.parse(f"{registry.host}/app")
        with client.open_blob(ref, BLOB_DIGEST) as stream:
            assert b"".join(stream) == BLOB
        with client.open_blob(ref, BLOB_DIGEST, offset=1000) as stream:
            assert b"".join(stream) == BLOB[1000:]
            assert stream.size == len(BLOB)
    assert [r.headers.get("authorization") for r in registry.requests] == [
        None,
        basic("u", "p"),
        basic("u", "p"),
    ]
    assert len(storage.requests) == 2
    assert all("authorization" not in r.headers for r in storage.requests)
    assert storage.requests[1].headers["range"] == "bytes=1000-"


def test_range_ignored_by_server_is_skipped(tmp_path):
    with StubServer() as registry:
        registry.route("GET", f"/v2/app/blobs/{BLOB_DIGEST}", lambda r: StubResponse(200, body=BLOB))
        client = make_client(tmp_path)
        with client.open_blob(Reference.parse(f"{registry.host}/app"), BLOB_DIGEST, offset=300_000) as stream:
            data = b"".join(stream)
            assert stream.position == len(BLOB)
    assert data == BLOB[300_000:]
    assert registry.requests[0].headers["range"] == "bytes=300000-"


def test_short_blob_raises_with_position(tmp_path):
    with StubServer() as registry:
        registry.route(
            "GET",
            f"/v2/app/blobs/{BLOB_DIGEST}",
            lambda r: StubResponse(
                206, {"Content-Range": f"bytes 10-{len(BLOB) - 1}/{len(BLOB)}"}, BLOB[10:]
            ),
        )
        client = make_client(tmp_path)
        with pytest.raises(RegistryError, match="answered a range request"):
            client.open_blob(Reference.parse(f"{registry.host}/app"), BLOB_DIGEST, offset=5)


class TokenServer:
    """A registry that wants Bearer tokens from a realm on the same stub server."""

    def __init__(self, stub: StubServer, *, user="u", password="p", key="token") -> None:
        self.stub = stub
        self.valid = {"t1"}
        self.issued = 0
        self.user, self.password, self.key = user, password, key
        stub.route("GET", "/token", self.token)
        stub.route("POST", "/token", self.token)
        stub.route("GET", "/v2/app/manifests/", self.manifest)

    def token(self, request: StubRequest) -> StubResponse:
        refresh = request.method == "POST" and b"refresh_token=rt" in request.body
        if not refresh and request.headers.get("authorization") != basic(self.user, self.password):
            return StubResponse(401, body=b'{"details":"bad creds"}')
        self.issued += 1
        return StubResponse(200, body=json.dumps({self.key: f"t{self.issued}", "expires_in": 300}).encode())

    def manifest(self, request: StubRequest) -> StubResponse:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid:
            challenge = f'Bearer realm="{self.stub.url}/token",service="stub",scope="repository:app:pull"'
            return StubResponse(401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        return StubResponse(
            200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}, MANIFEST
        )


def test_bearer_token_flow(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with StubServer() as stub:
        server = TokenServer(stub)
        client = make_client(tmp_path, {stub.host: Credentials("u", "p")})
        ref = Reference.parse(f"{stub.host}/app:v1")
        assert client.get_manifest(ref).descriptor.digest == MANIFEST_DIGEST
        assert client.get_manifest(ref).descriptor.digest == MANIFEST_DIGEST
        assert server.issued == 1  # cached per (host, scope)
        token_requests = [r for r in stub.requests if r.path.startswith("/token")]
        assert token_requests[0].path == "/token?service=stub&scope=repository:app:pull"
        assert token_requests[0].headers["authorization"] == basic("u", "p")
        # The registry revokes t1: the client gets a new token on the 401 and carries on.
        server.valid = {"t2"}
        assert client.get_manifest(ref).descriptor.digest == MANIFEST_DIGEST
        assert server.issued == 2
    assert "t1" not in caplog.text and "Bearer" not in caplog.text


def test_bearer_access_token_and_anonymous(tmp_path):
    with StubServer() as stub:
        server = TokenServer(stub, key="access_token")
        server.token = lambda request: StubResponse(200, body=b'{"access_token": "t1"}')  # type: ignore[method-assign]
        stub.route("GET", "/token", server.token)
        client = make_client(tmp_path)
        assert client.get_manifest(Reference.parse(f"{stub.host}/app:v1")).body == MANIFEST
        assert "authorization" not in next(r for r in stub.requests if r.path.startswith("/token")).headers


def test_bearer_identity_token(tmp_path):
    with StubServer() as stub:
        server = TokenServer(stub)
        client = make_client(tmp_path, {stub.host: Credentials("<token>", "rt")})
        assert client.get_manifest(Reference.parse(f"{stub.host}/app:v1")).body == MANIFEST
        post = next(r for r in stub.requests if r.path.startswith("/token"))
        assert post.method == "POST" and b"grant_type=refresh_token" in post.body
        assert server.issued == 1


def test_bearer_wrong_credentials(tmp_path):
    with StubServer() as stub:
        TokenServer(stub)
        client = make_client(tmp_path, {stub.host: Credentials("u", "wrong")})
        with pytest.raises(AuthError) as info:
            client.get_manifest(Reference.parse(f"{stub.host}/app:v1"))
    message = str(info.value)
    assert message.startswith(f"authentication to {stub.host} failed: token server")
    assert "'u'" in message and "wrong" not in message


def test_403_is_auth_error(tmp_path):
    with StubServer() as stub:
        stub.route(
            "GET",
            "/v2/app/manifests/",
            lambda r: StubResponse(403, body=b'{"errors":[{"code":"DENIED","message":"no pull for you"}]}'),
        )
        with pytest.raises(AuthError, match="DENIED: no pull for you"):
            make_client(tmp_path).get_manifest(Reference.parse(f"{stub.host}/app:v1"))


def test_other_4xx_carries_registry_error(tmp_path):
    with StubServer() as stub:
        stub.route(
            "PUT",
            "/v2/app/manifests/",
            lambda r: StubResponse(400, body=b'{"errors":[{"code":"MANIFEST_INVALID","message":"bad"}]}'),
        )
        with pytest.raises(RegistryError, match="HTTP 400: MANIFEST_INVALID: bad"):
            make_client(tmp_path).put_manifest(
                Reference.parse(f"{stub.host}/app"), "v1", MANIFEST, OCI_MANIFEST
            )


def test_manifest_checks(tmp_path):
    big = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "pad": "x" * (4 << 20)}).encode()
    with StubServer() as stub:
        stub.route(
            "GET", "/v2/app/manifests/big", lambda r: StubResponse(200, {"Content-Type": OCI_MANIFEST}, big)
        )
        stub.route(
            "GET",
            "/v2/app/manifests/lying",
            lambda r: StubResponse(
                200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "0" * 64}, MANIFEST
            ),
        )
        stub.route(
            "GET",
            "/v2/app/manifests/generic",
            lambda r: StubResponse(200, {"Content-Type": "application/json"}, MANIFEST),
        )
        stub.route(
            "GET",
            "/v2/app/manifests/sha256:",
            lambda r: StubResponse(200, {"Content-Type": OCI_MANIFEST}, MANIFEST),
        )
        client = make_client(tmp_path)
        ref = Reference.parse(f"{stub.host}/app")
        with pytest.raises(RegistryError, match="over the 4 MiB limit"):
            client.get_manifest(ref, "big")
        with pytest.raises(RegistryError, match="Docker-Content-Digest says sha256:0000"):
            client.get_manifest(ref, "lying")
        assert client.get_manifest(ref, "generic").descriptor.media_type == OCI_MANIFEST
        with pytest.raises(RegistryError, match="sent a manifest with digest"):
            client.get_manifest(ref, "sha256:" + "1" * 64)
        assert client.get_manifest(ref, MANIFEST_DIGEST).descriptor.digest == MANIFEST_DIGEST


def test_schema1_by_content_type(tmp_path):
    body = json.dumps({"schemaVersion": 1, "name": "app", "tag": "old", "fsLayers": []}).encode()
    with StubServer() as stub:
        stub.route(
            "GET",
            "/v2/app/manifests/old",
            lambda r: StubResponse(
                200, {"Content-Type": "application/vnd.docker.distribution.manifest.v1+json"}, body
            ),
        )
        with pytest.raises(RegistryError, match="uses Docker schema 1"):
            make_client(tmp_path).get_manifest(Reference.parse(f"{stub.host}/app:old"))


def test_redirect_loop_is_bounded(tmp_path):
    with StubServer() as stub:
        stub.route(
            "GET", "/v2/app/manifests/", lambda r: StubResponse(302, {"Location": "/v2/app/manifests/v1"})
        )
        with pytest.raises(RegistryError, match="too many redirects"):
            make_client(tmp_path).get_manifest(Reference.parse(f"{stub.host}/app:v1"))


def test_token_server_retry_after_is_honoured(tmp_path):
    """A token server that is busy (503 with Retry-After) is asked again after the delay it named."""
    with StubServer() as stub:
        server = TokenServer(stub)
        answers = [StubResponse(503, {"Retry-After": "1"}, b"busy")]
        issue = server.token
        stub.route("GET", "/token", lambda r: answers.pop() if answers else issue(r))
        client = make_client(tmp_path, {stub.host: Credentials("u", "p")})
        started = time.monotonic()
        assert client.get_manifest(Reference.parse(f"{stub.host}/app:v1")).body == MANIFEST
        elapsed = time.monotonic() - started
        tokens = [r for r in stub.requests if r.path.startswith("/token")]
    assert len(tokens) == 2 and server.issued == 1
    assert elapsed >= 1.0


def test_a_short_lived_token_is_renewed_before_it_lapses(tmp_path):
    """A token that lasts 1 s is not used past its lifetime (no 401 round trip): a new one is fetched first."""
    with StubServer() as stub:
        server = TokenServer(stub)
        issue = server.token

        def short_lived(request: StubRequest) -> StubResponse:
            answer = issue(request)
            if answer.status != 200:
                return answer
            server.valid = {f"t{server.issued}"}  # only the newest token is accepted
            return StubResponse(
                200, body=json.dumps({"token": f"t{server.issued}", "expires_in": 1}).encode()
            )

        stub.route("GET", "/token", short_lived)
        client = make_client(tmp_path, {stub.host: Credentials("u", "p")})
        ref = Reference.parse(f"{stub.host}/app:v1")
        client.get_manifest(ref)
        client.get_manifest(ref)  # within its lifetime: the same token
        assert server.issued == 1
        time.sleep(0.9)  # past the client's margin (a quarter of the lifetime), before the 1 s are up
        client.get_manifest(ref)
        manifests = [r for r in stub.requests if r.path.startswith("/v2/")]
    assert server.issued == 2
    assert [r.headers.get("authorization") for r in manifests] == [
        None,
        "Bearer t1",
        "Bearer t1",
        "Bearer t2",
    ]


def test_plain_http_to_an_https_server_says_so(tmp_path):
    """What Go's HTTPS servers (distribution) answer a plain-HTTP request with, explained with the fix."""
    with StubServer() as stub:
        stub.route(
            "GET",
            "/v2/app/manifests/",
            lambda r: StubResponse(400, body=b"Client sent an HTTP request to an HTTPS server.\n"),
        )
        with pytest.raises(RegistryError) as info:
            make_client(tmp_path).get_manifest(Reference.parse(f"{stub.host}/app:v1"))
    assert str(info.value).startswith(f"{stub.host} speaks HTTPS, but was sent plain HTTP")
    assert "--ca-file" in str(info.value) and "\n" not in str(info.value)

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.proxy import HttpProxy
from tests.registry.stub import StubResponse, StubServer


def test_proxy_records_counts_and_stops():
    with StubServer() as stub:
        stub.route("GET", "/data", lambda r: StubResponse(200, body=b"x" * 100_000))
        proxy = HttpProxy(stub.host).start()
        with urllib.request.urlopen(f"http://{proxy.host}/data", timeout=5) as response:
            assert len(response.read()) == 100_000
        proxy.cut_after(r"^/data", 1000)
        try:
            with urllib.request.urlopen(f"http://{proxy.host}/data", timeout=5) as response:
                got = response.read()
        except Exception:
            got = b""
        assert len(got) < 100_000
        proxy.inject_status(r"^/data", 503, headers={"Retry-After": "3"})
        try:
            urllib.request.urlopen(f"http://{proxy.host}/data", timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and exc.headers["Retry-After"] == "3"
        requests = proxy.requests
        proxy.stop()
    assert [r.status for r in requests] == [200, 200, 503]
    assert requests[1].cut and requests[1].body_bytes == 1000 and requests[2].injected
    assert proxy.body_bytes == 101_000
    assert requests[0].header("host") == proxy.host
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", proxy.port)) != 0  # listener closed


def _get(url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="PUT" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_proxy_resets_delays_and_corrupts():
    data = bytes(range(256)) * 400
    with StubServer() as stub:
        stub.route("GET", "/data", lambda r: StubResponse(200, body=data))
        stub.route("PUT", "/upload", lambda r: StubResponse(201, body=r.body))
        with HttpProxy(stub.host) as proxy:
            base = f"http://{proxy.host}"
            proxy.cut_after(r"^/data", 1000, reset=True)
            with pytest.raises((ConnectionResetError, http.client.IncompleteRead, urllib.error.URLError)):
                _get(f"{base}/data")
            proxy.delay(r"^/data", 0.5)
            started = time.monotonic()
            assert _get(f"{base}/data") == (200, data)
            assert time.monotonic() - started >= 0.5
            proxy.delay(r"^/data", 0.5, after_bytes=5000)
            assert _get(f"{base}/data") == (200, data)
            proxy.corrupt(r"^/data", at=300)
            status, got = _get(f"{base}/data")
            proxy.corrupt(r"^/upload", at=7, request=True, method="PUT")
            _, echoed = _get(f"{base}/upload", body=data)
            requests = proxy.requests
    assert status == 200 and [i for i in range(len(data)) if got[i] != data[i]] == [300]
    assert got[300] == data[300] ^ 0xFF
    assert [i for i in range(len(data)) if echoed[i] != data[i]] == [7]
    assert [(r.cut, r.delayed, r.corrupted) for r in requests] == [
        (True, False, False),
        (False, True, False),
        (False, True, False),
        (False, False, True),
        (False, False, True),
    ]
    assert requests[2].at - requests[1].at >= 0.5  # each request's arrival time


def test_proxy_requires_bearer_tokens():
    with StubServer() as stub:
        stub.route("GET", "/v2/team/app/manifests/", lambda r: StubResponse(200, body=b"ok"))
        stub.route("PUT", "/v2/team/app/manifests/", lambda r: StubResponse(201))
        with HttpProxy(stub.host) as proxy:
            proxy.require_bearer("http://auth.test/token", "reg", lambda token: token == "good")
            base = f"http://{proxy.host}/v2/team/app/manifests/v1"
            assert _get(base) == (
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            )
            assert _get(base, headers={"Authorization": "Bearer bad"})[0] == 401
            assert _get(base, headers={"Authorization": "Bearer good"}) == (200, b"ok")
            try:
                urllib.request.urlopen(urllib.request.Request(base, data=b"{}", method="PUT"), timeout=5)
            except urllib.error.HTTPError as exc:
                challenge = exc.headers["WWW-Authenticate"]
            requests = proxy.requests
    assert (
        challenge
        == 'Bearer realm="http://auth.test/token",service="reg",scope="repository:team/app:pull,push"'
    )
    assert [r.status for r in requests] == [401, 401, 200, 401]
    assert [r.injected for r in requests] == [True, True, False, True]
    assert len(stub.requests) == 1  # only the request with a valid token reached the upstream

from __future__ import annotations

import socket
import urllib.request

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

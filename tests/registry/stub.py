"""A tiny threaded HTTP server for tests of pure client logic (redirects, token flow, odd answers).

Claims about real registries are tested against docker-registry, not this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class StubRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StubResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Route = Callable[[StubRequest], StubResponse]


class StubServer:
    """``routes`` maps (method, path-prefix) to a function; the longest matching prefix wins."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[StubRequest] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = StubRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                stub.requests.append(request)
                route = stub._find(self.command, self.path)
                response = (
                    route(request) if route else StubResponse(404, body=b'{"errors":[{"code":"NOT_FOUND"}]}')
                )
                self.send_response(response.status)
                headers = {"Content-Length": str(len(response.body)), **response.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def _find(self, method: str, path: str) -> Route | None:
        best: tuple[int, Route] | None = None
        for (m, prefix), route in self.routes.items():
            if m == method and path.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), route)
        return best[1] if best else None

    def route(self, method: str, prefix: str, handler: Route) -> None:
        self.routes[(method, prefix)] = handler

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

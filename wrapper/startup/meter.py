"""A loopback HTTP proxy in front of the registry that counts the bytes the SOCI snapshotter fetches.

soci-snapshotter-grpc fetches the SOCI index, the zTOCs and the layers' spans from the registry itself, so
the tool cannot count those bytes where it downloads (as the full pull's are counted). The snapshotter is
given this proxy as its mirror for the image's registry (``[[resolver.host."HOST".mirrors]]``, plain
HTTP on 127.0.0.1): every request goes through here and is sent on to the registry (HTTPS when the registry
is, with the run's CA), and the bytes of every response body are counted. A redirect to another host (a
registry that serves blobs from object storage) is followed here, so those bytes are counted too. The
registry's authentication challenges and the client's Authorization headers pass through unchanged.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import threading
import urllib.parse
from typing import Any

import urllib3

log = logging.getLogger(__name__)

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
_CHUNK = 256 * 1024
_MAX_REDIRECTS = 5


class Meter:
    """Counts what passes through the proxy: response body bytes and requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.requests = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.bytes, self.requests


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: else a small body written after the head waits for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("meter: " + format, *args)

    def _forward(self) -> None:
        server = self.server
        server.meter.request()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = server.upstream + self.path
        try:
            response = self._send_upstream(url, headers, body)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.send_error(502, f"registry unreachable: {exc}")
            return
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() == "location" and value.startswith(server.upstream + "/"):
                    value = value[len(server.upstream) :]  # back through us, not straight to the registry
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            declared = response.headers.get("Content-Length")
            if declared is not None:
                self.send_header("Content-Length", declared)
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                for chunk in response.stream(_CHUNK, decode_content=False):
                    self.wfile.write(chunk)
                    server.meter.add(len(chunk))
        finally:
            response.release_conn()

    def _send_upstream(self, url: str, headers: dict[str, str], body: bytes | None) -> Any:
        """The registry's response; a GET's redirect to another host is followed (and counted) here."""
        pool = self.server.pool
        for _ in range(_MAX_REDIRECTS):
            response = pool.request(
                self.command,
                url,
                headers=headers,
                body=body,
                redirect=False,
                preload_content=False,
                retries=False,
            )
            location = response.headers.get("Location")
            if self.command not in ("GET", "HEAD") or response.status not in (301, 302, 303, 307, 308):
                return response
            if not location:
                return response
            target = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(target).netloc == urllib.parse.urlsplit(url).netloc:
                return response  # the client follows redirects within the registry through us again
            response.drain_conn()
            response.release_conn()
            # Object storage: presigned URL, no registry credentials.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        return response

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, ca_file: str | None, meter: Meter) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream.rstrip("/")
        self.meter = meter
        self.pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=32,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file,
            timeout=urllib3.Timeout(15, 120),
        )


class MeteredMirror:
    """The proxy for the registry at ``upstream`` (``https://host[:port]``), on a free loopback port while
    running (``with`` block); ``address`` is its ``127.0.0.1:PORT``."""

    def __init__(self, upstream: str, *, ca_file: str | None = None) -> None:
        self.meter = Meter()
        self._server = _Server(upstream, ca_file, self.meter)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="startup-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        with contextlib.suppress(Exception):
            self._server.pool.clear()

    def __enter__(self) -> MeteredMirror:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A small HTTP/1.1-aware TCP proxy on loopback, for tests that need to watch or break registry traffic.

It relays requests one at a time per connection (clients such as urllib3 do not pipeline), and:

* records each request (method, path, headers) and how many response bytes went back to the client;
* counts bytes sent from upstream to the client (``body_bytes`` / ``total_bytes``);
* can cut the connection once after N response-body bytes for requests whose path matches a pattern
  (``cut_after``), to test resuming downloads;
* can answer matching requests itself with a given status (``inject_status``), e.g. a 503 once;
* can cut the connection in the middle of a matching request's body (``cut_request_after``), as a network
  failure during an upload would.

With ``server_ssl``/``upstream_ssl`` it terminates TLS on the client side and speaks TLS upstream, so it
can record headers (``Authorization``) of HTTPS traffic.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

_BUF = 64 * 1024


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lowercased names
    status: int | None = None
    body_bytes: int = 0  # response body bytes relayed to the client
    cut: bool = False
    injected: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    remaining: int
    cut_after: int | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    method: str | None = None
    cut_request_after: int | None = None


class HttpProxy:
    def __init__(
        self,
        upstream: str,
        *,
        listen_host: str = "127.0.0.1",
        server_ssl: ssl.SSLContext | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
        upstream_server_hostname: str | None = None,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self._server_ssl = server_ssl
        self._upstream_ssl = upstream_ssl
        self._upstream_sni = upstream_server_hostname or host
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._requests: list[RecordedRequest] = []
        self.body_bytes = 0
        self.total_bytes = 0
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"{listen_host}:{self.port}"
        self._accept_thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)

    # Control ------------------------------------------------------------------------------------------
    def start(self) -> HttpProxy:
        self._accept_thread.start()
        return self

    def __enter__(self) -> HttpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._accept_thread.is_alive():
            self._accept_thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def cut_after(self, pattern: str, nbytes: int, *, times: int = 1, method: str | None = None) -> None:
        """Close the connection after ``nbytes`` response-body bytes of the next matching request(s)."""
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), times, cut_after=nbytes, method=method))

    def cut_request_after(
        self, pattern: str, nbytes: int, *, times: int = 1, method: str | None = None
    ) -> None:
        """Read ``nbytes`` of the next matching request's body, then close the connection (nothing is
        forwarded and no response is sent)."""
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), times, cut_request_after=nbytes, method=method))

    def inject_status(
        self,
        pattern: str,
        status: int,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        method: str | None = None,
    ) -> None:
        """Answer the next matching request(s) with ``status`` without forwarding them."""
        with self._lock:
            self._rules.append(
                _Rule(
                    re.compile(pattern),
                    times,
                    status=status,
                    headers=dict(headers or {}),
                    body=body,
                    method=method,
                )
            )

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self.body_bytes = 0
            self.total_bytes = 0

    # Relay --------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)  # closing a socket does not wake a blocked accept(): poll instead
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), name="proxy-conn", daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _connect_upstream(self) -> socket.socket:
        sock = socket.create_connection(self.upstream, timeout=30)
        if self._upstream_ssl is not None:
            sock = self._upstream_ssl.wrap_socket(sock, server_hostname=self._upstream_sni)
        return self._track(sock)

    def _match(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.pattern.search(path) and rule.method in (None, method):
                    rule.remaining -= 1
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream: socket.socket | None = None
        try:
            if self._server_ssl is not None:
                client = self._track(self._server_ssl.wrap_socket(client, server_side=True))
            client.settimeout(60)
            cfile = client.makefile("rb")
            ufile: BinaryIO | None = None
            while not self._stopping.is_set():
                head = _read_head(cfile)
                if head is None:
                    return
                request_line, header_lines = head
                method, path, _version = request_line.split(" ", 2)
                headers = _parse_headers(header_lines)
                record = RecordedRequest(method, path, {k.lower(): v for k, v in headers})
                with self._lock:
                    self._requests.append(record)
                rule = self._match(method, path)
                if rule is not None and rule.cut_request_after is not None:
                    _relay_body(cfile, None, headers, is_request=True, limit=rule.cut_request_after)
                    record.cut = True
                    _close(client)
                    return
                if rule is not None and rule.status is not None:
                    _relay_body(cfile, None, headers, is_request=True)
                    self._inject(client, record, rule)
                    continue
                if upstream is None:
                    upstream = self._connect_upstream()
                    ufile = upstream.makefile("rb")
                assert ufile is not None
                upstream.sendall(_head_bytes(request_line, header_lines))
                _relay_body(cfile, upstream, headers, is_request=True)
                response_head = _read_head(ufile)
                if response_head is None:
                    return
                status_line, response_lines = response_head
                record.status = int(status_line.split(" ", 2)[1])
                response_headers = _parse_headers(response_lines)
                head_bytes = _head_bytes(status_line, response_lines)
                client.sendall(head_bytes)
                with self._lock:
                    self.total_bytes += len(head_bytes)
                limit = rule.cut_after if rule is not None else None
                no_body = method == "HEAD" or record.status in (204, 304) or 100 <= record.status < 200
                complete = True
                if not no_body:
                    complete = _relay_body(
                        ufile,
                        client,
                        response_headers,
                        is_request=False,
                        limit=limit,
                        on_bytes=self._count(record),
                    )
                if not complete:
                    record.cut = True
                    _close(client)
                    return
                if _wants_close(response_headers) or _wants_close(headers):
                    return
        except (OSError, ValueError, IndexError):
            return
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _count(self, record: RecordedRequest) -> Callable[[int], None]:
        def on_bytes(n: int) -> None:
            with self._lock:
                record.body_bytes += n
                self.body_bytes += n
                self.total_bytes += n

        return on_bytes

    def _inject(self, client: socket.socket, record: RecordedRequest, rule: _Rule) -> None:
        assert rule.status is not None
        record.status = rule.status
        record.injected = True
        lines = [f"HTTP/1.1 {rule.status} Injected"]
        headers = {"Content-Length": str(len(rule.body)), "Content-Type": "text/plain", **rule.headers}
        lines += [f"{k}: {v}" for k, v in headers.items()]
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + rule.body)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _read_head(stream: BinaryIO) -> tuple[str, list[str]] | None:
    first = stream.readline(65536)
    while first in (b"\r\n", b"\n"):
        first = stream.readline(65536)
    if not first:
        return None
    lines: list[str] = []
    while True:
        line = stream.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line.decode("latin-1").rstrip("\r\n"))
    return first.decode("latin-1").rstrip("\r\n"), lines


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return out


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _wants_close(headers: list[tuple[str, str]]) -> bool:
    return (_header(headers, "connection") or "").lower() == "close"


def _head_bytes(first: str, lines: list[str]) -> bytes:
    return ("\r\n".join([first, *lines]) + "\r\n\r\n").encode("latin-1")


def _relay_body(
    src: BinaryIO,
    dst: socket.socket | None,
    headers: list[tuple[str, str]],
    *,
    is_request: bool,
    limit: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> bool:
    """Copy one message body; False if cut at ``limit`` bytes. ``dst`` None discards the body."""
    sent = 0

    def emit(data: bytes) -> bool:
        nonlocal sent
        if limit is not None and sent + len(data) > limit:
            data = data[: limit - sent]
            if dst is not None and data:
                dst.sendall(data)
                if on_bytes:
                    on_bytes(len(data))
            return False
        if dst is not None:
            dst.sendall(data)
        sent += len(data)
        if on_bytes:
            on_bytes(len(data))
        return True

    if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
        while True:
            size_line = src.readline(65536)
            if not emit(size_line):
                return False
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    trailer = src.readline(65536)
                    if not trailer or not emit(trailer):
                        return False
                    if trailer in (b"\r\n", b"\n"):
                        return True
            remaining = size + 2
            while remaining:
                data = src.read(min(_BUF, remaining))
                if not data:
                    return False
                remaining -= len(data)
                if not emit(data):
                    return False
    length = _header(headers, "content-length")
    if length is not None:
        remaining = int(length)
        while remaining:
            data = (
                src.read1(min(_BUF, remaining)) if hasattr(src, "read1") else src.read(min(_BUF, remaining))
            )
            if not data:
                return False
            remaining -= len(data)
            if not emit(data):
                return False
        return True
    if is_request:
        return True
    while True:  # response delimited by connection close
        data = src.read1(_BUF) if hasattr(src, "read1") else src.read(_BUF)
        if not data:
            return True
        if not emit(data):
            return False

"""A small HTTP/1.1-aware TCP proxy on loopback, for tests that need to watch or break registry traffic.

It relays requests one at a time per connection (clients such as urllib3 do not pipeline), and:

* records each request (method, path, headers) and how many response bytes went back to the client;
* counts bytes sent from upstream to the client (``body_bytes`` / ``total_bytes``);
* can cut the connection once after N response-body bytes for requests whose path matches a pattern
  (``cut_after``), to test resuming downloads;
* can answer matching requests itself with a given status (``inject_status``), e.g. a 503 once;
* can cut the connection in the middle of a matching request's body (``cut_request_after``), as a network
  failure during an upload would;
* can slow the response bodies of every matching request down to a number of bytes per second
  (``throttle``), or their request bodies (``throttle(..., request=True)``: an upload), so that a transfer
  is reliably still running when a test acts on it;
* can reset the connection (TCP RST) instead of closing it after N response-body bytes
  (``cut_after(..., reset=True)``), as a dropped connection would;
* can hold a matching response back for some seconds, before its head or after N body bytes (``delay``), as
  a registry slower than the client's read timeout would;
* can flip one byte of a matching response's or request's body (``corrupt``), so that a blob no longer
  matches its digest;
* can demand a valid Bearer token on every request (``require_bearer``), answering 401 with a
  ``WWW-Authenticate`` challenge otherwise, as a registry with a token server does;
* can read a matching request's whole body and answer it itself when the body is one it refuses
  (``refuse_body``), as Docker Hub refuses manifests with a ``subject`` or an unknown ``artifactType``
  (``refuse_soci_v1`` is that rule); other bodies are relayed unchanged.

Every request is recorded with the time it arrived (``RecordedRequest.at``, ``time.monotonic()``).

With ``server_ssl``/``upstream_ssl`` it terminates TLS on the client side and speaks TLS upstream, so it
can record headers (``Authorization``) of HTTPS traffic.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import struct
import threading
import time
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
    throttled: bool = (
        False  # its response body (request body: ``request=True``) was relayed at a ``throttle`` rate
    )
    request_bytes: int = 0  # request body bytes relayed to the upstream
    at: float = field(default_factory=time.monotonic)  # when its head arrived (time.monotonic())
    delayed: bool = False  # held back by a ``delay`` rule
    corrupted: bool = False  # one byte of its request or response body was flipped by a ``corrupt`` rule
    request_body: bytes | None = None  # kept for requests a ``refuse_body`` rule read (decoded if chunked)

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
    reset: bool = False  # cut with a TCP RST rather than a clean close ...
    settle: float = 0.0  # ... this many seconds after the last byte, so the client has read what was sent
    delay: float | None = None  # hold the response back this many seconds ...
    delay_after: int | None = None  # ... after this many body bytes (None: before its head)
    corrupt_at: int | None = None  # flip the byte at this body offset ...
    corrupt_request: bool = False  # ... of the request's body rather than the response's


@dataclass(frozen=True)
class _Bearer:
    realm: str
    service: str
    accept: Callable[[str], bool]


@dataclass
class _BodyRule:
    pattern: re.Pattern[str]
    refuse: Callable[[bytes], bool]
    status: int
    headers: dict[str, str]
    body: bytes
    method: str | None
    remaining: int | None  # refusals left; None: every matching request


@dataclass(frozen=True)
class _Throttle:
    pattern: re.Pattern[str]
    bytes_per_second: float
    method: str | None = None
    request: bool = False  # pace the request's body rather than the response's


class _Pacer:
    """Holds one body relay to ``rate`` bytes per second from its start, in steps of about 1/20 s."""

    def __init__(self, rate: float, stopping: threading.Event) -> None:
        self.rate = rate
        self.step = max(1, min(_BUF, int(rate / 20)))
        self._stopping = stopping
        self._start = time.monotonic()

    def wait_for(self, total: int) -> None:
        """Wait until ``total`` body bytes may have been sent; a proxy that stops ends the relay."""
        delay = self._start + total / self.rate - time.monotonic()
        if self._stopping.wait(max(0.0, delay)):
            raise ConnectionAbortedError("the proxy is stopping")


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
        self._throttles: list[_Throttle] = []
        self._body_rules: list[_BodyRule] = []
        self._bearer: _Bearer | None = None
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

    def cut_after(
        self,
        pattern: str,
        nbytes: int,
        *,
        times: int = 1,
        method: str | None = None,
        reset: bool = False,
        settle: float = 0.0,
    ) -> None:
        """Close the connection after ``nbytes`` response-body bytes of the next matching request(s): the
        client gets a body shorter than its Content-Length. ``reset``: end it with a TCP RST instead, after
        ``settle`` seconds (a RST makes the kernel drop what the client has not read yet)."""
        with self._lock:
            self._rules.append(
                _Rule(re.compile(pattern), times, cut_after=nbytes, method=method, reset=reset, settle=settle)
            )

    def delay(
        self,
        pattern: str,
        seconds: float,
        *,
        times: int = 1,
        method: str | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Hold the response to the next matching request(s) back for ``seconds``: before its head (the
        request has reached the upstream), or, with ``after_bytes``, after that many body bytes. The relay
        then goes on (into a connection the client may have given up on)."""
        with self._lock:
            self._rules.append(
                _Rule(re.compile(pattern), times, delay=seconds, delay_after=after_bytes, method=method)
            )

    def corrupt(
        self,
        pattern: str,
        *,
        at: int = 0,
        times: int = 1,
        method: str | None = None,
        request: bool = False,
    ) -> None:
        """Flip the bits of the byte at offset ``at`` of the next matching response's body (``request``:
        of the request's body, before it reaches the upstream). Bodies with a Content-Length only."""
        with self._lock:
            self._rules.append(
                _Rule(re.compile(pattern), times, corrupt_at=at, corrupt_request=request, method=method)
            )

    def require_bearer(self, realm: str, service: str, accept: Callable[[str], bool]) -> None:
        """From now on, relay only requests whose ``Authorization: Bearer TOKEN`` has a TOKEN that
        ``accept(TOKEN)`` accepts (called once per request); answer the others 401 with the challenge
        ``Bearer realm=...,service=...,scope=repository:NAME:pull`` (``pull,push`` for other methods than
        GET and HEAD), as distribution does with token authentication."""
        with self._lock:
            self._bearer = _Bearer(realm, service, accept)

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

    def throttle(
        self, pattern: str, bytes_per_second: float, *, method: str | None = None, request: bool = False
    ) -> None:
        """Relay the response body of every matching request at ``bytes_per_second`` at most, each request
        on its own (the slowest matching throttle wins), until the proxy stops. Other rules still apply.
        ``request``: the request's body instead (an upload; the proxy reads it from the client at that rate,
        so the client waits for its answer until the upstream has had all of it)."""
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        with self._lock:
            self._throttles.append(
                _Throttle(re.compile(pattern), float(bytes_per_second), method, request=request)
            )

    def refuse_body(
        self,
        pattern: str,
        refuse: Callable[[bytes], bool],
        status: int,
        *,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        times: int | None = None,
    ) -> None:
        """Read the whole body of every matching request (bodies with a Content-Length or chunked; the
        proxy holds them in memory, so use it for small ones such as manifests) and, when ``refuse(body)``
        is true, answer ``status`` with ``headers`` and ``body`` without forwarding it (``times`` refusals,
        or all of them); other bodies are relayed unchanged. Requests an earlier rule (``inject_status``,
        ``cut_request_after``, ...) takes are left to that rule."""
        with self._lock:
            self._body_rules.append(
                _BodyRule(re.compile(pattern), refuse, status, dict(headers or {}), body, method, times)
            )

    def refuse_soci_v1(self, *, status: int = 400) -> None:
        """Refuse manifest PUTs whose manifest has a ``subject`` or an ``artifactType`` with ``status`` and a
        distribution-style ``MANIFEST_INVALID`` error, as Docker Hub does with SOCI index manifests v1."""
        body = json.dumps(
            {
                "errors": [
                    {
                        "code": "MANIFEST_INVALID",
                        "message": "manifest invalid",
                        "detail": "manifests with a subject or an artifactType are not supported",
                    }
                ]
            }
        ).encode()
        self.refuse_body(
            r"^/v2/.+/manifests/[^/]+$",
            _has_subject_or_artifact_type,
            status,
            method="PUT",
            headers={"Content-Type": "application/json"},
            body=body,
        )

    def _body_rule(self, method: str, path: str) -> _BodyRule | None:
        with self._lock:
            for rule in self._body_rules:
                if rule.remaining != 0 and rule.pattern.search(path) and rule.method in (None, method):
                    return rule
        return None

    def _rate(self, method: str, path: str, *, request: bool = False) -> float | None:
        with self._lock:
            rates = [
                t.bytes_per_second
                for t in self._throttles
                if t.pattern.search(path) and t.method in (None, method) and t.request == request
            ]
        return min(rates) if rates else None

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

    def _refuse_unauthorized(self, record: RecordedRequest) -> _Rule | None:
        """The 401 to answer ``record`` with, when ``require_bearer`` is on and it has no valid token."""
        with self._lock:
            bearer = self._bearer
        if bearer is None:
            return None
        scheme, _, token = (record.header("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token and bearer.accept(token.strip()):
            return None
        actions = "pull" if record.method in ("GET", "HEAD") else "pull,push"
        match = re.match(r"^/v2/(.+)/(?:manifests|blobs|tags|referrers)/", record.path)
        scope = f',scope="repository:{match.group(1)}:{actions}"' if match else ""
        challenge = f'Bearer realm="{bearer.realm}",service="{bearer.service}"{scope}'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        return _Rule(
            re.compile(""),
            1,
            status=401,
            headers={"WWW-Authenticate": challenge, "Content-Type": "application/json"},
            body=body,
        )

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
                refusal = self._refuse_unauthorized(record)
                rule = refusal or self._match(method, path)
                if rule is not None and rule.cut_request_after is not None:
                    _relay_body(cfile, None, headers, is_request=True, limit=rule.cut_request_after)
                    record.cut = True
                    _close(client)
                    return
                if rule is not None and rule.status is not None:
                    _relay_body(cfile, None, headers, is_request=True)
                    self._inject(client, record, rule)
                    continue
                buffered: bytes | None = None  # the request body as read, for a ``refuse_body`` rule
                body_rule = self._body_rule(method, path) if rule is None else None
                if body_rule is not None:
                    collector = _Collector()
                    _relay_body(cfile, collector, headers, is_request=True)
                    buffered = bytes(collector.data)
                    chunked = (_header(headers, "transfer-encoding") or "").lower() == "chunked"
                    record.request_body = _dechunk(buffered) if chunked else buffered
                    if self._refuses(body_rule, record.request_body):
                        self._inject(
                            client,
                            record,
                            _Rule(
                                body_rule.pattern,
                                1,
                                status=body_rule.status,
                                headers=body_rule.headers,
                                body=body_rule.body,
                            ),
                        )
                        continue
                if upstream is None:
                    upstream = self._connect_upstream()
                    ufile = upstream.makefile("rb")
                assert ufile is not None
                upstream.sendall(_head_bytes(request_line, header_lines))
                corrupt_request = rule is not None and rule.corrupt_request
                if buffered is not None:
                    upstream.sendall(buffered)
                    record.request_bytes = len(buffered)
                else:
                    request_rate = self._rate(method, path, request=True)
                    record.throttled = request_rate is not None
                    _relay_body(
                        cfile,
                        upstream,
                        headers,
                        is_request=True,
                        corrupt_at=rule.corrupt_at if rule is not None and corrupt_request else None,
                        on_bytes=self._count_request(record),
                        pacer=_Pacer(request_rate, self._stopping) if request_rate is not None else None,
                    )
                record.corrupted = corrupt_request
                if rule is not None and rule.delay is not None and rule.delay_after is None:
                    record.delayed = True
                    if self._stopping.wait(rule.delay):
                        return
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
                    rate = self._rate(method, path)
                    record.throttled = record.throttled or rate is not None
                    pause = None
                    if rule is not None and rule.delay is not None and rule.delay_after is not None:
                        record.delayed = True
                        pause = _Pause(rule.delay_after, rule.delay, self._stopping)
                    corrupt_at = None
                    if rule is not None and rule.corrupt_at is not None and not rule.corrupt_request:
                        record.corrupted = True
                        corrupt_at = rule.corrupt_at
                    complete = _relay_body(
                        ufile,
                        client,
                        response_headers,
                        is_request=False,
                        limit=limit,
                        on_bytes=self._count(record),
                        pacer=_Pacer(rate, self._stopping) if rate is not None else None,
                        pause=pause,
                        corrupt_at=corrupt_at,
                    )
                if not complete:
                    record.cut = True
                    if rule is not None and rule.reset:
                        if self._stopping.wait(rule.settle):
                            return
                        _reset(client)
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

    def _count_request(self, record: RecordedRequest) -> Callable[[int], None]:
        def on_bytes(n: int) -> None:
            with self._lock:
                record.request_bytes += n

        return on_bytes

    def _refuses(self, rule: _BodyRule, body: bytes) -> bool:
        try:
            refused = rule.refuse(body)
        except Exception:  # a body the predicate cannot read is not one it refuses
            refused = False
        if refused:
            with self._lock:
                if rule.remaining is not None:
                    rule.remaining -= 1
        return refused

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


class _Collector:
    """Stands in for a socket: keeps what ``_relay_body`` sends it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data


def _dechunk(raw: bytes) -> bytes:
    """The payload of a chunked body (chunk extensions and trailers dropped)."""
    out = bytearray()
    pos = 0
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        size = int(raw[pos:end].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _has_subject_or_artifact_type(body: bytes) -> bool:
    """Whether a manifest has ``subject`` or a top-level ``artifactType`` (Docker Hub refuses both)."""
    doc = json.loads(body)
    return isinstance(doc, dict) and ("subject" in doc or "artifactType" in doc)


@dataclass
class _Pause:
    """Hold a body relay for ``seconds`` once ``at`` bytes have been sent; a proxy that stops ends it."""

    at: int
    seconds: float
    stopping: threading.Event
    done: bool = False

    def wait(self) -> None:
        self.done = True
        if self.stopping.wait(self.seconds):
            raise ConnectionAbortedError("the proxy is stopping")


def _reset(sock: socket.socket) -> None:
    """Make the next close send a TCP RST (SO_LINGER with a zero timeout) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


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
    dst: socket.socket | _Collector | None,
    headers: list[tuple[str, str]],
    *,
    is_request: bool,
    limit: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    pacer: _Pacer | None = None,
    pause: _Pause | None = None,
    corrupt_at: int | None = None,
) -> bool:
    """Copy one message body; False if cut at ``limit`` bytes. ``dst`` None discards the body. ``pacer``
    holds the copy to its rate; ``pause`` holds it once; the byte at ``corrupt_at`` is flipped."""
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        if pause is not None and not pause.done and sent <= pause.at < sent + len(data):
            before = pause.at - sent
            send(data[:before])
            pause.wait()
            data = data[before:]
        step = pacer.step if pacer is not None else max(1, len(data))
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            if corrupt_at is not None and sent <= corrupt_at < sent + len(piece):
                i = corrupt_at - sent
                piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
            if pacer is not None:
                pacer.wait_for(sent + len(piece))
            if dst is not None:
                dst.sendall(piece)
            sent += len(piece)
            if on_bytes:
                on_bytes(len(piece))

    def emit(data: bytes) -> bool:
        if limit is not None and sent + len(data) > limit:
            if dst is not None:
                send(data[: limit - sent])
            return False
        send(data)
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

"""A registry on loopback made to look far away: added latency per request and a rate cap per stream.

This kernel has no netem (``tc qdisc add dev lo root netem`` says the qdisc kind is unknown), and a tbf qdisc
caps the whole interface, not each stream. So both go into tests/proxy.py's HTTP proxy, in front of the
registry: ``delay(".*", latency)`` holds every response back (after the request reached the registry, before
its head goes out), which is one added round trip per request; ``throttle(".*", rate)`` relays every response
body at ``rate`` bytes per second at most, each request on its own (a per-stream cap, as a long link with a
TCP window gives one connection).

``TimedProxy`` also notes when each response's last body byte went out, so the benchmark has a request log
with start, end, bytes and range of every request (``fetch_log``). ``check_link`` measures, through the proxy
and straight to the registry, what the settings give: the latency added to a small request and the rate of
one and of two parallel streams.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.proxy import HttpProxy, RecordedRequest

# A delay rule is consumed by each request it holds back: this many lasts any benchmark.
_EVERY_REQUEST = 10**9


@dataclass(frozen=True)
class LinkSettings:
    latency: float = 0.020  # seconds added to every request
    rate: float = 50e6  # bytes per second, per response body

    def describe(self) -> str:
        return f"{self.latency * 1000:g} ms per request, {self.rate / 1e6:g} MB/s per stream"


@dataclass(frozen=True)
class Fetch:
    """One request through the proxy; times in ``time.monotonic()`` seconds."""

    method: str
    path: str
    range: str | None
    status: int | None
    user_agent: str
    start: float
    end: float  # when the last body byte went out (the start, for a response without body)
    bytes: int

    @property
    def blob(self) -> bool:
        return "/blobs/" in self.path

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _no_delay(sock: socket.socket) -> socket.socket:
    """Send small writes at once: without it a response's head and a small body written after it wait for the
    client's delayed ACK (40 ms on Linux), which would add 40 ms to every small response."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class TimedProxy(HttpProxy):
    """tests/proxy.py's proxy, noting when each response body's last byte was relayed."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self._ends: dict[int, float] = {}

    def _serve(self, client: socket.socket) -> None:
        _no_delay(client)
        super()._serve(client)

    def _connect_upstream(self) -> socket.socket:
        return _no_delay(super()._connect_upstream())

    def _count(self, record: RecordedRequest) -> Callable[[int], None]:
        count = super()._count(record)
        ends = self._ends

        def on_bytes(n: int) -> None:
            count(n)
            ends[id(record)] = time.monotonic()

        return on_bytes

    def reset(self) -> None:
        super().reset()
        self._ends.clear()

    def fetch_log(self) -> list[Fetch]:
        out = []
        for r in self.requests:
            out.append(
                Fetch(
                    r.method,
                    r.path,
                    r.header("range"),
                    r.status,
                    r.header("user-agent") or "",
                    r.at,
                    self._ends.get(id(r), r.at),
                    r.body_bytes,
                )
            )
        return out


@contextlib.contextmanager
def slow_registry(upstream: str, settings: LinkSettings) -> Iterator[TimedProxy]:
    """A proxy on a free loopback port in front of ``upstream`` (``host:port``, plain HTTP) with ``settings``;
    stopped afterwards."""
    proxy = TimedProxy(upstream)
    if settings.latency > 0:
        proxy.delay(".*", settings.latency, times=_EVERY_REQUEST)
    if settings.rate > 0:
        proxy.throttle(".*", settings.rate)
    with proxy:
        yield proxy


@dataclass(frozen=True)
class LinkCheck:
    """What the proxy's settings measured: median milliseconds of a small request straight to the registry
    and through the proxy, and MB/s of a blob's body on one stream and on each of two parallel streams."""

    direct_ms: float
    proxied_ms: float
    one_stream_mbps: float
    two_streams_mbps: tuple[float, float]
    blob_bytes: int

    @property
    def added_ms(self) -> float:
        return self.proxied_ms - self.direct_ms

    def describe(self) -> str:
        two = " and ".join(f"{x:.1f}" for x in self.two_streams_mbps)
        return (
            f"measured: +{self.added_ms:.1f} ms per request (GET /v2/: {self.direct_ms:.1f} ms direct, "
            f"{self.proxied_ms:.1f} ms through the proxy); a {self.blob_bytes / 1e6:.1f} MB blob at "
            f"{self.one_stream_mbps:.1f} MB/s alone, {two} MB/s two at once"
        )


def _get_times(host: str, path: str, count: int) -> list[float]:
    """Seconds of ``count`` GETs of ``path`` on one kept-alive connection (after one to open it)."""
    address, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=30)
    try:
        times = []
        for i in range(count + 1):
            started = time.monotonic()
            conn.request("GET", path)
            conn.getresponse().read()
            if i:
                times.append(time.monotonic() - started)
        return times
    finally:
        conn.close()


def _body_rate(host: str, path: str) -> tuple[float, int]:
    """MB/s of one GET's body (from the response head to its last byte), and its size."""
    address, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        started = time.monotonic()
        size = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
        return size / (time.monotonic() - started) / 1e6, size
    finally:
        conn.close()


def check_link(proxy: str, registry: str, blob_path: str, *, requests: int = 10) -> LinkCheck:
    """Measure the settings (see LinkCheck): ``blob_path`` is a ``/v2/<name>/blobs/<digest>`` of a few MB."""
    direct = statistics.median(_get_times(registry, "/v2/", requests)) * 1000
    proxied = statistics.median(_get_times(proxy, "/v2/", requests)) * 1000
    one, size = _body_rate(proxy, blob_path)
    rates: list[float] = []
    threads = [
        threading.Thread(target=lambda: rates.append(_body_rate(proxy, blob_path)[0])) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(rates) != 2:
        raise RuntimeError("a parallel GET through the proxy failed")
    return LinkCheck(direct, proxied, one, (rates[0], rates[1]), size)


__all__ = ["Fetch", "LinkCheck", "LinkSettings", "TimedProxy", "check_link", "slow_registry"]

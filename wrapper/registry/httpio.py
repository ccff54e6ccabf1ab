"""Small HTTP helpers of the registry client: hosts and ports, headers, bounded body reads, releasing
connections to the pool."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from urllib.parse import quote, urlencode

import urllib3
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from wrapper.core.util import one_line
from wrapper.registry.errcode import MAX_ERROR_BODY, Transient

READ_CHUNK = 1 << 20


def split_host(netloc: str) -> tuple[str, int | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return netloc, None


def read_limited(response: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; a connection lost meanwhile raises Transient."""
    chunks: list[bytes] = []
    total = 0
    try:
        while total < limit:
            data = response.read(min(READ_CHUNK, limit - total))
            if not data:
                break
            chunks.append(data)
            total += len(data)
    except (Urllib3HTTPError, OSError) as exc:
        raise Transient(f"connection lost while reading a response: {one_line(exc)}") from None
    return b"".join(chunks)


def discard(response: urllib3.BaseHTTPResponse) -> None:
    """Release a response: a small unread rest is drained so the connection is reused, else it is closed."""
    try:
        rest = response.read(MAX_ERROR_BODY + 1)
    except (Urllib3HTTPError, OSError):
        rest = b""
        response.close()
    if len(rest) > MAX_ERROR_BODY:
        response.close()
    response.release_conn()


def media_type(value: str | None) -> str:
    """The media type of a Content-Type header, without parameters, lowercased."""
    return (value or "").split(";", 1)[0].strip().lower()


def redact_url(url: str) -> str:
    """The URL without its query (upload state and presigned-URL signatures live there)."""
    return url.split("?", 1)[0]


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def add_query(url: str, params: Mapping[str, str]) -> str:
    if not params:
        return url
    query = urlencode(params, quote_via=quote, safe=":")
    return url + ("&" if "?" in url else "?") + query

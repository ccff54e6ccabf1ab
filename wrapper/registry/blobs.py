"""Blob reads: streamed from any offset (an HTTP Range request), so that a broken transfer resumes where it
stopped; small blobs read whole, resumed and checked against their digest; existence checks (HEAD)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from types import TracebackType

import urllib3
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from wrapper.core.errors import RegistryError
from wrapper.core.models import validate_digest
from wrapper.core.reference import Reference
from wrapper.core.util import one_line
from wrapper.registry.errcode import BlobReadError, Transient, connection_problem
from wrapper.registry.httpio import READ_CHUNK, discard
from wrapper.registry.transport import MAX_MANIFEST_BYTES, Transport

log = logging.getLogger("wrapper.registry")

_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


class BlobStream:
    """A blob being downloaded: iterate for ``bytes`` chunks (at most 1 MiB each); close when done.

    ``size`` is the total blob size when the registry said it, ``position`` the absolute offset of the
    next byte. A broken connection raises BlobReadError carrying ``position``; reopen with that offset.
    """

    def __init__(
        self,
        response: urllib3.BaseHTTPResponse | None,
        *,
        size: int | None,
        offset: int,
        skip: int,
        label: str,
    ) -> None:
        self._response = response
        self.size = size
        self.position = offset
        self._skip = skip
        self._label = label
        self._done = response is None

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        if self._response is None:
            return
        response = self._response
        try:
            while True:
                try:
                    data = response.read(READ_CHUNK)
                except (Urllib3HTTPError, OSError) as exc:
                    log.debug("reading %s at byte %d: %s", self._label, self.position, one_line(exc))
                    raise BlobReadError(
                        f"connection lost while reading {self._label} at byte {self.position}: "
                        f"{connection_problem(exc)}",
                        position=self.position,
                    ) from None
                if not data:
                    break
                if self._skip:
                    # The registry ignored our Range header: drop the bytes we already have.
                    dropped = min(self._skip, len(data))
                    self._skip -= dropped
                    data = data[dropped:]
                    if not data:
                        continue
                self.position += len(data)
                yield data
            if self.size is not None and self.position < self.size:
                raise BlobReadError(
                    f"{self._label} ended at byte {self.position} of {self.size}", position=self.position
                )
            self._done = True
        finally:
            self.close()

    def close(self) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        if not self._done:
            # Do not drain a large unread body into a pooled connection: drop the connection.
            response.close()
        response.release_conn()


def open_blob(
    transport: Transport, ref: Reference, digest: str, *, offset: int = 0, retry: bool = True
) -> BlobStream:
    """Start streaming blob ``digest`` from byte ``offset`` (a Range request when offset > 0). With
    ``retry`` False a transient failure raises Transient, for the caller's retry loop."""
    validate_digest(digest)
    if offset < 0:
        raise ValueError("offset must be >= 0")
    headers = {"Accept": "*/*"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    label = f"blob {digest} of {ref.registry}/{ref.repository}"
    response = transport.request(
        "GET",
        transport.url(ref, f"blobs/{digest}"),
        ref=ref,
        headers=headers,
        allow=(416,),
        what=label,
        retry=retry,
    )
    content_range = response.headers.get("Content-Range", "")
    length = response.headers.get("Content-Length")
    if response.status == 416:
        discard(response)
        total = _range_total(content_range)
        if total is not None and offset >= total:
            return BlobStream(None, size=total, offset=offset, skip=0, label=label)
        raise RegistryError(f"{ref.registry} refused the range {offset}- of {label}")
    if response.status == 206:
        match = _CONTENT_RANGE_RE.match(content_range.strip())
        if not match or int(match.group(1)) != offset:
            response.close()
            response.release_conn()
            raise RegistryError(
                f"{ref.registry} answered a range request for {label} with Content-Range {content_range!r}"
            )
        size = int(match.group(3)) if match.group(3) != "*" else None
        return BlobStream(response, size=size, offset=offset, skip=0, label=label)
    size = int(length) if length and length.isdigit() else None
    if offset:
        log.debug("%s ignored the Range header; skipping %d bytes", ref.registry, offset)
    return BlobStream(response, size=size, offset=offset, skip=offset, label=label)


def read_blob(
    transport: Transport, ref: Reference, digest: str, *, max_bytes: int = MAX_MANIFEST_BYTES
) -> bytes:
    """The whole of a small blob (an image config), checked against ``digest``. A transfer that breaks is
    resumed where it stopped (Range), within the transport's retry budget; content that does not match its
    digest raises RegistryError at once."""
    data = bytearray()
    retrying = transport.retrying(ref.registry)
    try:
        for attempt in retrying:
            with attempt:
                try:
                    with open_blob(transport, ref, digest, offset=len(data), retry=False) as stream:
                        for chunk in stream:
                            data += chunk
                            if len(data) > max_bytes:
                                raise RegistryError(
                                    f"blob {digest} of {ref.registry}/{ref.repository} is over {max_bytes} bytes"
                                )
                except BlobReadError as exc:
                    raise Transient(exc.message) from None
    except Transient as exc:
        raise transport.gave_up(retrying, ref.registry, exc.reason) from None
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise RegistryError(
            f"{ref.registry} served blob {digest} with the wrong content (its {len(data)} bytes have digest "
            f"{actual})"
        )
    return bytes(data)


def blob_exists(transport: Transport, ref: Reference, digest: str) -> bool:
    validate_digest(digest)
    response = transport.request(
        "HEAD", transport.url(ref, f"blobs/{digest}"), ref=ref, allow=(404,), what=f"blob {digest}"
    )
    discard(response)
    return response.status != 404


def _range_total(content_range: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", content_range)
    return int(match.group(1)) if match else None

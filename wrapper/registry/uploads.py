"""Blob uploads: a session (POST), the bytes (one streamed PUT, or PATCH chunks and a closing PUT), the digest
checked by the registry. An upload that fails for a transient reason starts again from a new session.

The bytes are checked against the descriptor on the way out, and the last of them is held back until they
have been: a source whose size or digest is wrong never completes an upload, whatever the registry checks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urljoin

import urllib3

from wrapper.core.errors import RegistryError
from wrapper.core.models import Descriptor, validate_digest
from wrapper.core.reference import Reference
from wrapper.core.util import rechunk
from wrapper.registry.blobs import blob_exists
from wrapper.registry.errcode import SourceMismatchError, Transient
from wrapper.registry.httpio import add_query, discard
from wrapper.registry.transport import Transport

log = logging.getLogger("wrapper.registry")

BlobSource = Callable[[], Iterable[bytes]]


def push_blob(
    transport: Transport,
    ref: Reference,
    descriptor: Descriptor,
    source: BlobSource,
    *,
    chunk_size: int | None = None,
) -> bool:
    """Upload a blob unless the repository has it already (then return False).

    ``source()`` yields the blob's bytes; it is called again when the upload restarts after a transient
    failure. ``chunk_size`` None: one monolithic PUT streaming the body; otherwise PATCH requests of
    ``chunk_size`` bytes (one chunk is held in memory), then the closing PUT.
    """
    validate_digest(descriptor.digest)
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if blob_exists(transport, ref, descriptor.digest):
        log.debug("blob %s already in %s/%s", descriptor.digest, ref.registry, ref.repository)
        return False
    retrying = transport.retrying(ref.registry)
    try:
        for attempt in retrying:
            with attempt:
                _upload_once(transport, ref, descriptor, source, chunk_size)
    except Transient as exc:
        reason = f"upload of blob {descriptor.digest} failed: {exc.reason}"
        raise transport.gave_up(retrying, ref.registry, reason) from None
    return True


def _upload_once(
    transport: Transport,
    ref: Reference,
    descriptor: Descriptor,
    source: BlobSource,
    chunk_size: int | None,
) -> None:
    what = f"upload of blob {descriptor.digest}"
    start = _empty(transport, "POST", transport.url(ref, "blobs/uploads/"), ref, what)
    discard(start)
    location = _location(transport, ref, start)
    if chunk_size is None:
        response = transport.request(
            "PUT",
            add_query(location, {"digest": descriptor.digest}),
            ref=ref,
            push=True,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(descriptor.size)},
            body=lambda: _verified(source(), descriptor),
            retry=False,
            what=what,
        )
    else:
        offset = 0
        for chunk in rechunk(_verified(source(), descriptor), chunk_size):
            patch = transport.request(
                "PATCH",
                location,
                ref=ref,
                push=True,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(chunk)),
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
                body=chunk,
                retry=False,
                what=what,
            )
            discard(patch)
            offset += len(chunk)
            location = _location(transport, ref, patch)
        response = _empty(transport, "PUT", add_query(location, {"digest": descriptor.digest}), ref, what)
    discard(response)
    returned = response.headers.get("Docker-Content-Digest")
    if returned and returned != descriptor.digest:
        raise RegistryError(f"{ref.registry} stored blob {descriptor.digest} as {returned}")


def _empty(
    transport: Transport, method: str, url: str, ref: Reference, what: str
) -> urllib3.BaseHTTPResponse:
    """An upload request without a body (the POST that opens an upload, the PUT that closes a chunked one);
    never retried on its own: the whole upload is."""
    return transport.request(
        method, url, ref=ref, push=True, headers={"Content-Length": "0"}, body=b"", retry=False, what=what
    )


def _location(transport: Transport, ref: Reference, response: urllib3.BaseHTTPResponse) -> str:
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{ref.registry} started a blob upload without a Location header")
    return urljoin(transport.base_url(ref.registry) + "/", location)


def _verified(chunks: Iterable[bytes], descriptor: Descriptor) -> Iterator[bytes]:
    """``chunks``, checked against ``descriptor``'s size and digest; the last chunk is yielded only once
    the whole has been checked, so a wrong source raises SourceMismatchError before the upload can complete."""
    algorithm, _, expected = descriptor.digest.partition(":")
    hasher = hashlib.new(algorithm)
    total = 0
    held: bytes | None = None
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if total > descriptor.size:
            raise SourceMismatchError(descriptor.digest, f"the source is larger than {descriptor.size} bytes")
        hasher.update(chunk)
        if held is not None:
            yield held
        held = bytes(chunk)
    if total != descriptor.size:
        raise SourceMismatchError(descriptor.digest, f"the source gave {total} bytes, not {descriptor.size}")
    if hasher.hexdigest() != expected:
        raise SourceMismatchError(
            descriptor.digest,
            f"the bytes to upload do not match its digest (they have {algorithm}:{hasher.hexdigest()})",
        )
    if held is not None:
        yield held

"""containerd's Content service: blobs addressed by digest, and resumable ingests keyed by a ref.

Writing is one bidirectional ``Write`` stream per blob:

1. STAT (with the expected digest and size): containerd answers with the offset it already holds for
   ``ref`` (an ingest survives a dropped stream), or with ALREADY_EXISTS if the blob is stored.
2. WRITE messages with the data from that offset on. They are pipelined: a bounded queue feeds the
   stream while a helper thread consumes containerd's answer to each message.
3. COMMIT with the expected digest and size; containerd verifies both and moves the blob into the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from wrapper.containerd._proto import content_pb2, content_pb2_grpc
from wrapper.containerd.channel import Connection, status_code, status_details
from wrapper.core.errors import ContainerdError, NotFoundError
from wrapper.core.util import rechunk

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# WRITE messages waiting for the stream: bounds the memory of one write() to about this many chunks.
QUEUE_DEPTH = 8
# How long write() keeps retrying while containerd still holds the ref's lock from a dropped stream.
_LOCKED_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """What one write() did: where it resumed, how much data it sent, whether the blob was there already."""

    offset_resumed_from: int
    bytes_sent: int
    already_existed: bool

    @property
    def committed(self) -> bool:
        """True if this call committed the blob (False if it already existed)."""
        return not self.already_existed


class _StreamEnded(Exception):
    """Internal: the Write stream ended while we were still sending."""


class _SourceFailed(Exception):
    """Internal: carries the exception raised by the caller's data source."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _WriteStream:
    """One Write call: a bounded queue of requests in, a thread collecting the responses."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], stall_timeout: float) -> None:
        # A containerd that neither takes data nor answers for this long is taken as hung (no deadline
        # bounds a whole Write stream, since a large blob legitimately takes long).
        self._stall_timeout = stall_timeout
        self._requests: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._closed = threading.Event()
        self._call = stub.Write(self._request_iterator(), metadata=metadata)
        self._responses: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._reader = threading.Thread(target=self._read, name="containerd-write-responses", daemon=True)
        self._reader.start()

    def _request_iterator(self) -> Iterator[Any]:
        # Runs in grpc's sending thread; the timeout lets it notice close() even if nothing is queued.
        while True:
            try:
                item = self._requests.get(timeout=0.2)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()
            self._responses.put(None)

    def send(self, request: Any) -> None:
        """Queue a request; blocks while the queue is full, raises _StreamEnded if the stream is over."""
        deadline = time.monotonic() + self._stall_timeout
        while True:
            if self.ended.is_set():
                raise _StreamEnded()
            if time.monotonic() > deadline:
                self.cancel()
                raise ContainerdError(
                    f"containerd took no data on content.Write for {self._stall_timeout:.0f} s; giving up"
                )
            try:
                self._requests.put(request, timeout=0.2)
                return
            except queue.Full:
                continue

    def half_close(self) -> None:
        """Tell containerd we have nothing more to send."""
        with contextlib.suppress(_StreamEnded):
            self.send(None)

    def next_response(self) -> Any:
        """The next answer from containerd; None once the stream has ended (see ``error``)."""
        try:
            return self._responses.get(timeout=self._stall_timeout)
        except queue.Empty:
            self.cancel()
            raise ContainerdError(
                f"containerd did not answer content.Write within {self._stall_timeout:.0f} s"
            ) from None

    def wait(self, timeout: float) -> bool:
        """Wait for containerd to end the stream; True if it did."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def cancel(self) -> None:
        self._call.cancel()
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5.0)


class ContentService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = content_pb2_grpc.ContentStub(conn.channel)

    # -- reading ----------------------------------------------------------------------------------------

    def info(self, digest: str) -> ContentInfo:
        """Size and labels of a stored blob; NotFoundError if it is not in the store."""
        resp = self._conn.unary("content.Info", self._stub.Info, content_pb2.InfoRequest(digest=digest))
        return _info(resp.info)

    def exists(self, digest: str) -> bool:
        try:
            self.info(digest)
        except NotFoundError:
            return False
        return True

    def read(self, digest: str, *, offset: int = 0, size: int = 0) -> Iterator[bytes]:
        """Stream a blob's bytes from ``offset`` (``size`` 0 means to the end)."""
        request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        for resp in self._conn.server_stream("content.Read", self._stub.Read, request):
            yield bytes(resp.data)

    def list_digests(self) -> list[str]:
        """Digests of all blobs in the store visible in our namespace."""
        stream = self._conn.server_stream("content.List", self._stub.List, content_pb2.ListContentRequest())
        return [str(info.digest) for resp in stream for info in resp.info]

    def status(self, ref: str) -> int | None:
        """The offset held by the active ingest ``ref``, or None if there is none."""
        try:
            resp = self._conn.unary("content.Status", self._stub.Status, content_pb2.StatusRequest(ref=ref))
        except NotFoundError:
            return None
        return int(resp.status.offset)

    # -- changing ---------------------------------------------------------------------------------------

    def abort(self, ref: str) -> None:
        """Drop the ingest ``ref`` and its partial data (NotFoundError if there is none)."""
        self._conn.unary("content.Abort", self._stub.Abort, content_pb2.AbortRequest(ref=ref))

    def delete(self, digest: str) -> None:
        """Remove a blob from the namespace (containerd frees the bytes when no namespace uses them)."""
        request = content_pb2.DeleteContentRequest(digest=digest)
        self._conn.unary("content.Delete", self._stub.Delete, request)

    def update_labels(self, digest: str, labels: Mapping[str, str]) -> ContentInfo:
        """Set the given labels on a blob, keeping its others; an empty value removes that label."""
        info = content_pb2.Info(digest=digest, labels=dict(labels))
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
        request = content_pb2.UpdateRequest(info=info, update_mask=mask)
        return _info(self._conn.unary("content.Update", self._stub.Update, request).info)

    def write(
        self,
        ref: str,
        source: Callable[[int], Iterable[bytes]],
        *,
        total: int,
        expected: str,
        labels: Mapping[str, str] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> WriteResult:
        """Store a blob of ``total`` bytes with digest ``expected``, resuming the ingest ``ref``.

        ``source(offset)`` must yield the blob's bytes from ``offset`` on. If it raises, every byte it
        produced so far (a last piece shorter than a chunk too) stays in the ingest and the exception
        propagates; a later write() with the same ref continues from exactly there. A stream failure
        raises ContainerdError (the ingest is kept too). A commit that fails verification (digest or
        size) raises ContainerdError and drops the ingest.
        ``on_progress(n)`` is called with the size of each chunk handed to the stream.
        """
        waited = 0.0
        while True:
            try:
                return self._write_once(ref, source, total, expected, labels, on_progress)
            except ContainerdError as exc:
                # A stream that just dropped may still hold the ref's lock for a moment.
                detail = exc.detail or ""
                if "UNAVAILABLE" not in detail or "locked" not in detail or waited >= _LOCKED_RETRY_SECONDS:
                    raise
                log.debug("ingest %s is locked, retrying", ref)
                time.sleep(0.1)
                waited += 0.1

    def _write_once(
        self,
        ref: str,
        source: Callable[[int], Iterable[bytes]],
        total: int,
        expected: str,
        labels: Mapping[str, str] | None,
        on_progress: Callable[[int], None] | None,
    ) -> WriteResult:
        action = content_pb2.WriteAction
        stream = _WriteStream(self._stub, self._conn.metadata(), self._conn.timeout)
        try:
            # 1. STAT: where does the ingest stand? (ALREADY_EXISTS if the blob is stored.)
            stream.send(
                content_pb2.WriteContentRequest(action=action.STAT, ref=ref, total=total, expected=expected)
            )
            first = stream.next_response()
            if first is None:
                if stream.error is not None and status_code(stream.error) == grpc.StatusCode.ALREADY_EXISTS:
                    return WriteResult(offset_resumed_from=0, bytes_sent=0, already_existed=True)
                raise self._stream_error(stream, ref)
            start = offset = int(first.offset)
            if offset > total:
                stream.cancel()
                self._abort_quietly(ref)  # the ingest cannot be this blob: start over next time
                raise ContainerdError(
                    f"ingest {ref} held {offset} bytes, more than the blob's {total}; dropped it"
                )

            # 2. WRITE: everything from `offset` on, without waiting for each answer.
            try:
                # A source that breaks off has what it produced since the last full chunk flushed first: the
                # ingest then holds every byte it gave, and a resume starts exactly where it broke.
                for chunk in rechunk(_guard(source, offset), CHUNK_SIZE, flush_on_error=True):
                    request = content_pb2.WriteContentRequest(
                        action=action.WRITE, ref=ref, offset=offset, data=chunk
                    )
                    stream.send(request)
                    offset += len(chunk)
                    if on_progress is not None:
                        on_progress(len(chunk))
            except _SourceFailed as failed:
                # Keep what was sent: end the stream cleanly so containerd writes all of it.
                stream.half_close()
                if not stream.wait(self._conn.timeout):
                    stream.cancel()
                raise failed.error from None

            # 3. COMMIT: containerd checks size and digest and answers once more, then ends the stream.
            commit = content_pb2.WriteContentRequest(
                action=action.COMMIT,
                ref=ref,
                offset=offset,
                total=total,
                expected=expected,
                labels=dict(labels or {}),
            )
            stream.send(commit)
            stream.half_close()
            last = None
            while (response := stream.next_response()) is not None:
                last = response
            if stream.error is not None:
                if status_code(stream.error) == grpc.StatusCode.ALREADY_EXISTS:
                    # Someone else committed the same blob while we were writing.
                    return WriteResult(start, offset - start, already_existed=True)
                error = self._stream_error(stream, ref)
                if status_code(stream.error) == grpc.StatusCode.FAILED_PRECONDITION:
                    self._abort_quietly(ref)
                raise error
            if last is None or last.action != action.COMMIT:
                raise ContainerdError(f"containerd ended the write of {ref} without confirming the commit")
            return WriteResult(offset_resumed_from=start, bytes_sent=offset - start, already_existed=False)
        except _StreamEnded:
            stream.wait(self._conn.timeout)
            raise self._stream_error(stream, ref) from None
        except BaseException:
            stream.cancel()
            raise
        finally:
            stream.close()

    def _stream_error(self, stream: _WriteStream, ref: str) -> ContainerdError:
        if stream.error is None:
            return ContainerdError(f"containerd ended the write of {ref} early")
        mapped = self._conn.error(stream.error, "content.Write")
        if isinstance(mapped, ContainerdError):
            return mapped
        # NOT_FOUND and the like, during a write, are containerd failures for our purposes.
        return ContainerdError(
            f"containerd content.Write of {ref} failed: {status_details(stream.error)}", detail=mapped.detail
        )

    def _abort_quietly(self, ref: str) -> None:
        try:
            self.abort(ref)
        except (ContainerdError, NotFoundError) as exc:
            log.debug("abort of %s after a failed commit: %s", ref, exc)


def _guard(source: Callable[[int], Iterable[bytes]], offset: int) -> Iterator[bytes]:
    """Yield ``source(offset)``, wrapping the source's own exceptions so write() can tell them apart."""
    try:
        yield from source(offset)
    except Exception as exc:
        raise _SourceFailed(exc) from exc


def _info(msg: Any) -> ContentInfo:
    return ContentInfo(digest=str(msg.digest), size=int(msg.size), labels=dict(msg.labels))


def sha256_of(chunks: Iterable[bytes]) -> str:
    """The ``sha256:`` digest of streamed bytes (for checking what read() returns)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"

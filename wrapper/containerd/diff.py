"""containerd's Diff service: Apply unpacks a layer of the content store into an active snapshot's mounts, as
containerd's own unpacker does for a pull (then Snapshots.Commit makes it a layer others can build on)."""

from __future__ import annotations

from collections.abc import Iterable

from wrapper.containerd._proto import descriptor_pb2, diff_pb2, diff_pb2_grpc
from wrapper.containerd.channel import Connection
from wrapper.containerd.mounts import MountLike, to_proto
from wrapper.core.models import Descriptor

# Unpacking a large layer takes a while: the deadline of one Apply.
APPLY_TIMEOUT = 1800.0


class DiffService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = diff_pb2_grpc.DiffStub(conn.channel)

    def apply(self, layer: Descriptor, mounts: Iterable[MountLike], *, timeout: float = APPLY_TIMEOUT) -> str:
        """Unpack ``layer`` (its blob must be in the content store) into ``mounts``; the digest of the
        uncompressed layer (its diff ID)."""
        request = diff_pb2.ApplyRequest(
            diff=descriptor_pb2.Descriptor(media_type=layer.media_type, digest=layer.digest, size=layer.size),
            mounts=to_proto(mounts),
        )
        return str(self._conn.unary("diff.Apply", self._stub.Apply, request, timeout=timeout).applied.digest)

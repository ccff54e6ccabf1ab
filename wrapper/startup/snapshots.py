"""containerd's Snapshots service, for one snapshotter (what a start-up run needs of it).

Interim: the project's own Snapshots client is moving into wrapper/containerd/ (issue 16); this adapter goes
when it lands, and its callers use that client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from wrapper.containerd._proto import snapshots_pb2, snapshots_pb2_grpc
from wrapper.containerd.channel import Connection, status_code
from wrapper.containerd.mounts import Mount
from wrapper.core.errors import WrapperError

log = logging.getLogger(__name__)


class SnapshotsAdapter:
    """Snapshots of ``snapshotter`` through the containerd at ``address``, in ``namespace``, in ``lease``."""

    def __init__(self, address: str, namespace: str, snapshotter: str, *, lease: str | None = None) -> None:
        self._conn = Connection(address, namespace, timeout=600.0)
        self._conn.lease = lease
        self._stub = snapshots_pb2_grpc.SnapshotsStub(self._conn.channel)
        self.snapshotter = snapshotter

    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount] | None:
        """An active snapshot ``key`` on ``parent``: its mounts; None when the snapshotter answered
        ALREADY_EXISTS (a remote snapshotter that made the layer itself)."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        try:
            response = self._stub.Prepare(request, metadata=self._conn.metadata(), timeout=self._conn.timeout)
        except grpc.RpcError as exc:
            if status_code(exc) == grpc.StatusCode.ALREADY_EXISTS:
                return None
            raise self._conn.error(exc, "snapshots.Prepare", timeout=self._conn.timeout) from None
        return [Mount.of(m) for m in response.mounts]

    def commit(self, name: str, key: str) -> None:
        request = snapshots_pb2.CommitSnapshotRequest(snapshotter=self.snapshotter, name=name, key=key)
        self._conn.unary("snapshots.Commit", self._stub.Commit, request)

    def exists(self, key: str) -> bool:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        try:
            self._stub.Stat(request, metadata=self._conn.metadata(), timeout=self._conn.timeout)
        except grpc.RpcError as exc:
            if status_code(exc) == grpc.StatusCode.NOT_FOUND:
                return False
            raise self._conn.error(exc, "snapshots.Stat", timeout=self._conn.timeout) from None
        return True

    def remove(self, key: str) -> bool:
        """Remove ``key`` (False when it could not be: absent, or a parent of another)."""
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        try:
            self._conn.unary("snapshots.Remove", self._stub.Remove, request)
        except WrapperError as exc:
            log.debug("removing snapshot %s: %s", key, exc)
            return False
        return True

    def keys(self) -> list[tuple[str, str]]:
        """Every snapshot of the snapshotter in the namespace, as (name, parent)."""
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=self.snapshotter)
        pairs = []
        for response in self._conn.server_stream("snapshots.List", self._stub.List, request):
            pairs += [(str(i.name), str(i.parent)) for i in response.info]
        return pairs

    def remove_all(self) -> int:
        """Remove every snapshot, children before parents; how many are left (0 when all went)."""
        for _ in range(64):
            pairs = self.keys()
            if not pairs:
                return 0
            parents = {parent for _, parent in pairs}
            leaves = [name for name, _ in pairs if name not in parents]
            if not any([self.remove(name) for name in leaves]):
                return len(pairs)
        return len(self.keys())

    def close(self) -> None:
        self._conn.close()

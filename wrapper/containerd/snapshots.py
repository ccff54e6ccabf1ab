"""containerd's Snapshots service: prepare, view, commit, stat and remove snapshots of one snapshotter.

The same service is also what a proxy snapshotter (soci-snapshotter-grpc) serves on its own socket: a client
on that socket (``ContainerdClient(snapshotter_socket, namespace).snapshots``, with snapshotter ``""``, which
the snapshotter ignores) reaches it directly. That is the way around containerd 1.6, which does not pass the
caller's namespace on to proxy snapshotters.

A remote snapshotter answers Prepare with ALREADY_EXISTS when it has made the snapshot itself (lazily, for a
layer it can serve): ``prepare`` returns None then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wrapper.containerd._proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from wrapper.containerd.channel import AlreadyExistsError, Connection
from wrapper.core.errors import NotFoundError


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "view", "active", "committed"
    labels: Mapping[str, str]


_KINDS = {
    snapshots_pb2.Kind.VIEW: "view",
    snapshots_pb2.Kind.ACTIVE: "active",
    snapshots_pb2.Kind.COMMITTED: "committed",
}


class SnapshotsService:
    """Calls go to the snapshotter named in each call (``snapshotter``; default: the service's own)."""

    def __init__(self, conn: Connection, snapshotter: str = "overlayfs") -> None:
        self._conn = conn
        self._stub = snapshots_pb2_grpc.SnapshotsStub(conn.channel)
        self.snapshotter = snapshotter

    def prepare(
        self,
        key: str,
        parent: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        timeout: float | None = None,
    ) -> list[mount_pb2.Mount] | None:
        """An active snapshot ``key`` on ``parent``: the mounts to unpack into, or None when the snapshotter
        answered ALREADY_EXISTS (a remote snapshotter that committed the target itself)."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self._name(snapshotter), key=key, parent=parent, labels=dict(labels or {})
        )
        try:
            response = self._conn.unary("snapshots.Prepare", self._stub.Prepare, request, timeout=timeout)
        except AlreadyExistsError:
            return None
        return list(response.mounts)

    def view(
        self,
        key: str,
        parent: str,
        *,
        labels: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
    ) -> list[mount_pb2.Mount]:
        """A read-only view ``key`` of committed snapshot ``parent``: its mounts."""
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self._name(snapshotter), key=key, parent=parent, labels=dict(labels or {})
        )
        return list(self._conn.unary("snapshots.View", self._stub.View, request).mounts)

    def mounts(self, key: str, *, snapshotter: str | None = None) -> list[mount_pb2.Mount]:
        request = snapshots_pb2.MountsRequest(snapshotter=self._name(snapshotter), key=key)
        return list(self._conn.unary("snapshots.Mounts", self._stub.Mounts, request).mounts)

    def commit(
        self, name: str, key: str, *, labels: Mapping[str, str] | None = None, snapshotter: str | None = None
    ) -> None:
        """Commit active snapshot ``key`` as ``name``."""
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self._name(snapshotter), name=name, key=key, labels=dict(labels or {})
        )
        self._conn.unary("snapshots.Commit", self._stub.Commit, request)

    def stat(
        self, key: str, *, snapshotter: str | None = None, timeout: float | None = None
    ) -> SnapshotInfo | None:
        """The snapshot ``key``, or None if there is none."""
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self._name(snapshotter), key=key)
        try:
            info = self._conn.unary("snapshots.Stat", self._stub.Stat, request, timeout=timeout).info
        except NotFoundError:
            return None
        return SnapshotInfo(
            name=str(info.name),
            parent=str(info.parent),
            kind=_KINDS.get(info.kind, "unknown"),
            labels=dict(info.labels),
        )

    def remove(self, key: str, *, snapshotter: str | None = None) -> None:
        """Remove snapshot ``key`` (NotFoundError if there is none)."""
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self._name(snapshotter), key=key)
        self._conn.unary("snapshots.Remove", self._stub.Remove, request)

    def _name(self, snapshotter: str | None) -> str:
        return self.snapshotter if snapshotter is None else snapshotter

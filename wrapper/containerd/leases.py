"""containerd's Leases service: a lease keeps content (and images' content) from garbage collection.

Calls made with the ``containerd-lease`` header attach what they create to that lease; see
``ContainerdClient.lease()``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from wrapper.containerd._proto import leases_pb2, leases_pb2_grpc
from wrapper.containerd.channel import Connection

# containerd deletes a lease on its own once the time in this label (RFC 3339) has passed.
EXPIRE_LABEL = "containerd.io/gc.expire"


def new_lease_id() -> str:
    """A unique, sortable lease id (containerd does not pick one itself)."""
    return f"soci-wrapper-{time.time_ns()}-{secrets.token_hex(4)}"


class LeasesService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = leases_pb2_grpc.LeasesStub(conn.channel)

    def create(self, *, labels: Mapping[str, str] | None = None, expire_seconds: int | None = None) -> str:
        """Create a lease and return its id; with ``expire_seconds`` containerd drops it after that time."""
        all_labels = dict(labels or {})
        if expire_seconds is not None:
            expiry = datetime.now(UTC) + timedelta(seconds=expire_seconds)
            all_labels[EXPIRE_LABEL] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        request = leases_pb2.CreateRequest(id=new_lease_id(), labels=all_labels)
        resp = self._conn.unary("leases.Create", self._stub.Create, request)
        return str(resp.lease.id)

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete a lease; ``sync`` waits for the garbage collection that may follow."""
        self._conn.unary("leases.Delete", self._stub.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=sync))

    def resources(self, lease_id: str) -> list[tuple[str, str]]:
        """What a lease holds, as (type, id) pairs, e.g. ("content", "sha256:...")."""
        request = leases_pb2.ListResourcesRequest(id=lease_id)
        resp = self._conn.unary("leases.ListResources", self._stub.ListResources, request)
        return [(str(r.type), str(r.id)) for r in resp.resources]

    def list(self) -> list[str]:
        resp = self._conn.unary("leases.List", self._stub.List, leases_pb2.ListRequest())
        return [str(lease.id) for lease in resp.leases]

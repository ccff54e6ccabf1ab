"""containerd's Containers service: container records (metadata only: the OCI runtime spec, the runtime, the
root filesystem's snapshot). Nothing runs until the Tasks service creates a task for one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2

from wrapper.containerd._proto import containers_pb2, containers_pb2_grpc
from wrapper.containerd.channel import Connection

# containerd's type URL for an OCI runtime spec carried as JSON in an Any.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
# The runc shim that Debian's containerd package installs (containerd-shim-runc-v2).
RUNC_RUNTIME = "io.containerd.runc.v2"


@dataclass
class Container:
    """A container record: ``spec`` is the OCI runtime spec (a JSON document)."""

    id: str
    spec: dict[str, Any]
    runtime: str = RUNC_RUNTIME
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def spec_any(spec: Mapping[str, Any]) -> Any:
    """The runtime spec as containerd stores it: JSON in an Any of type ``SPEC_TYPE_URL``."""
    return any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec, separators=(",", ":")).encode())


def _to_proto(container: Container) -> Any:
    return containers_pb2.Container(
        id=container.id,
        labels=dict(container.labels),
        image=container.image,
        runtime=containers_pb2.Container.Runtime(name=container.runtime),
        spec=spec_any(container.spec),
        snapshotter=container.snapshotter,
        snapshot_key=container.snapshot_key,
    )


def _from_proto(msg: Any) -> Container:
    spec = json.loads(bytes(msg.spec.value)) if msg.spec.value else {}
    return Container(
        id=str(msg.id),
        spec=spec,
        runtime=str(msg.runtime.name),
        image=str(msg.image),
        snapshotter=str(msg.snapshotter),
        snapshot_key=str(msg.snapshot_key),
        labels=dict(msg.labels),
    )


class ContainersService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = containers_pb2_grpc.ContainersStub(conn.channel)

    def create(self, container: Container) -> Container:
        """Create the record; ContainerdError if the id is taken."""
        request = containers_pb2.CreateContainerRequest(container=_to_proto(container))
        return _from_proto(self._conn.unary("containers.Create", self._stub.Create, request).container)

    def get(self, container_id: str) -> Container:
        """The record ``container_id``; NotFoundError if there is none."""
        request = containers_pb2.GetContainerRequest(id=container_id)
        return _from_proto(self._conn.unary("containers.Get", self._stub.Get, request).container)

    def list(self, *filters: str) -> list[Container]:
        """The namespace's records, optionally filtered (containerd's filter syntax, e.g. ``id==x``)."""
        request = containers_pb2.ListContainersRequest(filters=list(filters))
        response = self._conn.unary("containers.List", self._stub.List, request)
        return [_from_proto(c) for c in response.containers]

    def delete(self, container_id: str) -> None:
        """Delete the record (NotFoundError if absent; containerd refuses while it has a task)."""
        request = containers_pb2.DeleteContainerRequest(id=container_id)
        self._conn.unary("containers.Delete", self._stub.Delete, request)

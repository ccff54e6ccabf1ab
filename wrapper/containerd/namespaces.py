"""containerd's Namespaces service. Every record we make lives in one namespace (default soci-wrapper)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from wrapper.containerd._proto import namespace_pb2, namespace_pb2_grpc
from wrapper.containerd.channel import Connection, status_code


class NamespacesService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = namespace_pb2_grpc.NamespacesStub(conn.channel)

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Create namespace ``name``; ContainerdError if it exists already."""
        ns = namespace_pb2.Namespace(name=name, labels=dict(labels or {}))
        self._conn.unary(
            "namespaces.Create", self._stub.Create, namespace_pb2.CreateNamespaceRequest(namespace=ns)
        )

    def ensure(self, name: str) -> None:
        """Create namespace ``name`` unless it exists."""
        ns = namespace_pb2.Namespace(name=name)
        try:
            self._stub.Create(
                namespace_pb2.CreateNamespaceRequest(namespace=ns),
                metadata=self._conn.metadata(),
                timeout=self._conn.timeout,
            )
        except grpc.RpcError as exc:
            if status_code(exc) != grpc.StatusCode.ALREADY_EXISTS:
                raise self._conn.error(exc, "namespaces.Create", timeout=self._conn.timeout) from None

    def list(self) -> list[str]:
        resp = self._conn.unary("namespaces.List", self._stub.List, namespace_pb2.ListNamespacesRequest())
        return [str(ns.name) for ns in resp.namespaces]

    def delete(self, name: str) -> None:
        """Delete an empty namespace (containerd refuses one that still holds records)."""
        self._conn.unary(
            "namespaces.Delete", self._stub.Delete, namespace_pb2.DeleteNamespaceRequest(name=name)
        )

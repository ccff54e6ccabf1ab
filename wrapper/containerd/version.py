"""containerd's Version service: which daemon we are talking to."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import empty_pb2

from wrapper.containerd._proto import version_pb2_grpc
from wrapper.containerd.channel import Connection


@dataclass(frozen=True)
class VersionInfo:
    version: str
    revision: str


class VersionService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = version_pb2_grpc.VersionStub(conn.channel)

    def get(self, *, timeout: float | None = None) -> VersionInfo:
        """The daemon's version; also the cheapest way to check that it answers."""
        resp = self._conn.unary("version.Version", self._stub.Version, empty_pb2.Empty(), timeout=timeout)
        return VersionInfo(version=str(resp.version), revision=str(resp.revision))

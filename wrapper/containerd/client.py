"""ContainerdClient: one connection to containerd, in one namespace, with a service object per API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from wrapper.containerd.channel import Connection, DaemonExitedError
from wrapper.containerd.containers import ContainersService
from wrapper.containerd.content import ContentService
from wrapper.containerd.diff import DiffService
from wrapper.containerd.images import ImagesService
from wrapper.containerd.leases import LeasesService
from wrapper.containerd.namespaces import NamespacesService
from wrapper.containerd.snapshots import SnapshotsService
from wrapper.containerd.tasks import TasksService
from wrapper.containerd.version import VersionService
from wrapper.core.errors import WrapperError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "soci-wrapper"


class ContainerdClient:
    """Talks to the containerd at ``address`` (a unix socket path, with or without ``unix://``).

    Every call carries ``namespace``; unary calls time out after ``timeout`` seconds.

        with ContainerdClient(sock) as client, client.lease():
            client.content.write(...)
    """

    def __init__(self, address: str, namespace: str = DEFAULT_NAMESPACE, *, timeout: float = 30.0) -> None:
        self._conn = Connection(address, namespace, timeout=timeout)
        self.version = VersionService(self._conn)
        self.content = ContentService(self._conn)
        self.images = ImagesService(self._conn)
        self.leases = LeasesService(self._conn)
        self.namespaces = NamespacesService(self._conn)
        # Snapshots of "overlayfs" unless a call names another snapshotter (e.g. the proxy "soci"); on a
        # proxy snapshotter's own socket, of that snapshotter.
        self.snapshots = SnapshotsService(self._conn)
        # Running containers (startup): needs a containerd with its tasks service (not the indexing config).
        self.containers = ContainersService(self._conn)
        self.tasks = TasksService(self._conn)
        self.diff = DiffService(self._conn)

    @property
    def address(self) -> str:
        """The socket path."""
        return self._conn.address

    @property
    def namespace(self) -> str:
        return self._conn.namespace

    @property
    def current_lease(self) -> str | None:
        """The lease sent with every call right now (inside ``lease()``), if any."""
        return self._conn.lease

    @contextmanager
    def lease(self, *, expire_seconds: int = 3600) -> Iterator[str]:
        """Create a lease, attach every call made through this client to it, delete it on exit.

        Content written inside stays safe from garbage collection until the lease ends (or expires after
        ``expire_seconds`` if we never get to delete it); reference it from an image record to keep it.
        """
        lease_id = self.leases.create(expire_seconds=expire_seconds)
        previous = self._conn.lease
        self._conn.lease = lease_id
        failed = True
        try:
            yield lease_id
            failed = False
        finally:
            self._conn.lease = previous
            try:
                self.leases.delete(lease_id)
            except WrapperError as exc:
                if not failed:
                    raise
                # Do not hide the error that ended the block; the lease expires on its own (and a daemon that
                # died, which that error already says, has no lease to delete).
                level = logging.DEBUG if isinstance(exc, DaemonExitedError) else logging.WARNING
                log.log(level, "could not delete lease %s: %s", lease_id, exc)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""What every command's run shares: the preflight check of containerd, the registry client, the run directory,
and the session that starts containerd when an image first needs it and stops it (and removes the run
directory) at the end. ``wrapper.run.pipeline``, ``wrapper.run.batch`` and ``wrapper.verify`` use these."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import (
    MISSING_MESSAGE,
    AttachedContainerd,
    ManagedContainerd,
    containerd_binary_version,
    find_containerd,
)
from wrapper.core.errors import ContainerdError, MissingDependencyError, UsageError
from wrapper.core.options import DaemonOptions, RegistryOptions
from wrapper.core.reference import Reference
from wrapper.core.report import Stages
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.runner import Soci
from wrapper.system import rundirs

log = logging.getLogger("wrapper.run.session")


def check_containerd(options: DaemonOptions) -> None:
    """Before any network work: the containerd this run will use is there (and root, to start our own)."""
    if options.containerd_address:
        AttachedContainerd(options.containerd_address).start()  # the socket exists and answers Version
        return
    binary = find_containerd(options.containerd_bin)
    if binary is None:
        where = "" if options.containerd_bin == "containerd" else f" (looked for {options.containerd_bin})"
        raise MissingDependencyError(MISSING_MESSAGE + where)
    containerd_binary_version(binary)  # a program that is not containerd: exit 9 now, not after the pull
    if os.geteuid() != 0:
        raise ContainerdError(
            "starting a private containerd needs root",
            hint="run as root (a privileged CodeBuild project), or attach with --containerd-address",
        )


def open_registry(ref: Reference, options: RegistryOptions) -> RegistryClient:
    explicit: dict[str, Credentials] = {}
    if options.username is not None:
        explicit[ref.registry] = Credentials(options.username, options.password or "")
    store = CredentialStore(explicit=explicit, docker_config_dir=options.docker_config)
    return RegistryClient(
        store,
        ca_file=options.ca_file,
        plain_http=options.plain_http,
        endpoint_overrides=dict(options.endpoint_overrides) or None,
        read_timeout=options.read_timeout,
    )


@contextlib.contextmanager
def run_directory(options: DaemonOptions) -> Iterator[Path]:
    """A fresh directory for this run (inside --work-dir if given); removed afterwards unless kept. The run
    directories that runs killed before left there are cleaned up first (``wrapper.system.rundirs``)."""
    parent = options.work_dir
    if parent is not None:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create work directory {parent}: {exc.strerror}") from exc
    with rundirs.run_directory(parent, keep=options.keep_work_dir) as path:
        yield path


@contextlib.contextmanager
def containerd_session(options: DaemonOptions, run_dir: Path) -> Iterator[ContainerdClient]:
    """Start our own containerd (or attach to one) and yield a client in our namespace."""
    with _daemon(options, run_dir) as daemon, ContainerdClient(daemon.address, options.namespace) as client:
        client.namespaces.ensure(options.namespace)
        yield client


def _daemon(options: DaemonOptions, run_dir: Path) -> ManagedContainerd | AttachedContainerd:
    if options.containerd_address:
        return AttachedContainerd(options.containerd_address)
    return ManagedContainerd(run_dir / "containerd", binary=options.containerd_bin, keep_work_dir=True)


class Session:
    """The run directory and containerd of one run, started when an image first needs them (an already indexed
    image needs neither) and shared by every image of the run; stopped and removed on exit. Each image gets a
    client of its own: a client's lease is one at a time."""

    def __init__(self, options: DaemonOptions, stages: Stages | None = None) -> None:
        self.options = options
        self._stages = stages
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._address: str | None = None
        self._images = 0

    def __enter__(self) -> Session:
        # Also a run that needs no run directory (every image already indexed) cleans up after killed runs.
        rundirs.sweep(self.options.work_dir)
        return self

    def __exit__(self, *exc: Any) -> None:
        # The exception goes on to the daemon: a managed containerd that died says so instead of it (it
        # replaces the exception; nothing here swallows one).
        self._stack.__exit__(*exc)

    @property
    def run_dir(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = self._stack.enter_context(run_directory(self.options))
            return self._dir

    def image_dir(self) -> Path:
        """A directory of its own for one image's files (soci's root, its temporary files, reused zTOCs)."""
        with self._lock:
            self._images += 1
            number = self._images
        path = self.run_dir / f"image-{number}"
        path.mkdir()
        return path

    def client(self) -> ContainerdClient:
        """A new client (closed with the session) on the run's containerd, started on the first call."""
        run_dir = self.run_dir
        with self._lock:
            if self._address is None:
                timing = self._stages("containerd") if self._stages else contextlib.nullcontext()
                with timing:
                    daemon = _daemon(self.options, run_dir)
                    self._stack.enter_context(daemon)
                    self._address = daemon.address
                    first = self._stack.enter_context(ContainerdClient(self._address, self.options.namespace))
                    first.namespaces.ensure(self.options.namespace)
                    return first
            return self._stack.enter_context(ContainerdClient(self._address, self.options.namespace))


def soci_in(run_dir: Path, binary: str, client: ContainerdClient, *, timeout: float, debug: bool) -> Soci:
    """soci for one image of a run: its root (database and content store) and temporary files in ``run_dir``,
    reading from ``client``'s containerd. soci's own content store, for V1 and V2 (see wrapper.soci.indexing)."""
    return Soci(
        binary=binary,
        address=client.address,
        namespace=client.namespace,
        root=run_dir / "soci-root",
        tmp_dir=run_dir / "tmp",
        timeout=timeout,
        debug=debug,
        content_store="soci",
    )

"""The containerd a start-up run uses: a private one, inside the run's namespaces, that runs containers.

The indexing config disables everything that runs containers; this one turns the runtime back on (the tasks
service, the runc shim's v2 runtime, and what 1.6 and 2.x make them depend on). It is started inside the
sandbox (sandbox.py) through a small launcher script given as the containerd program, so that its shims and
containers live and die in the sandbox's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd, ProxyPlugin, find_containerd
from wrapper.containerd.snapshots import SnapshotsService
from wrapper.core.errors import ContainerdError, MissingDependencyError
from wrapper.startup.meter import MeteredMirror
from wrapper.startup.report import PrefetchLoaded
from wrapper.startup.sandbox import Sandbox
from wrapper.system.binaries import find_program

# Taken off the indexing config's disabled plugins (IDs of 1.6 and of 2.x; each release ignores the other's).
RUN_PLUGINS = (
    "io.containerd.grpc.v1.tasks",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.runtime.v2.task",
    "io.containerd.runtime.v1.linux",  # 1.6's tasks service will not load without a v1 runtime
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.monitor.task.v1.cgroups",
    "io.containerd.shim.v1.manager",
)
SNAPSHOTTER_PLUGIN = "soci"
SHIM = "containerd-shim-runc-v2"


def check_can_run(containerd_bin: str, *, what: str, root_hint: str) -> None:
    """Before any network work: what running a container here needs (containerd, runc and containerd's runc
    shim, root). ``what``: who asks, as the errors say it (``startup``, ``--record-prefetch``)."""
    program = find_containerd(containerd_bin)
    if program is None:
        raise MissingDependencyError(
            f"{what} starts the image in a containerd of its own: containerd not found "
            f"(looked for {containerd_bin})",
            hint="install containerd, or pass --containerd-bin",
        )
    beside = Path(program).resolve().parent  # containerd finds its shim beside itself, too
    for name in ("runc", SHIM):
        if find_program(name) is None and not (name == SHIM and (beside / SHIM).is_file()):
            raise MissingDependencyError(
                f"{what} runs the image with runc: {name} is not on PATH",
                hint="install runc and containerd's runc shim (Debian: the runc and containerd packages)",
            )
    if os.geteuid() != 0:
        raise ContainerdError(
            f"{what} starts the image in a containerd of its own, which needs root", hint=root_hint
        )


def launcher_script(sandbox: Sandbox, binary: str, directory: Path) -> str:
    """An executable that runs ``binary`` (with its arguments) inside the sandbox, to hand to
    ManagedContainerd as the containerd program."""
    path = directory / "containerd-in-sandbox"
    command = " ".join(shlex.quote(a) for a in [*sandbox.launcher(), binary])
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    os.chmod(path, 0o755)
    return str(path)


def sandboxed_containerd(
    sandbox: Sandbox, work_dir: Path, *, binary: str = "containerd", snapshotter_address: str | None = None
) -> ManagedContainerd:
    """A ManagedContainerd (not started) that runs containers inside ``sandbox``; with
    ``snapshotter_address``, soci-snapshotter-grpc at that socket is its ``soci`` snapshotter."""
    program = find_containerd(binary)
    if program is None:
        raise MissingDependencyError(f"containerd not found (looked for {binary})")
    work_dir.mkdir(parents=True, exist_ok=True)
    proxies = (
        [ProxyPlugin(SNAPSHOTTER_PLUGIN, "snapshot", snapshotter_address)] if snapshotter_address else []
    )
    return ManagedContainerd(
        work_dir,
        binary=launcher_script(sandbox, program, work_dir),
        keep_work_dir=True,
        enable_plugins=RUN_PLUGINS,
        proxy_plugins=proxies,
    )


@dataclass
class Daemons:
    """What one variant runs on: containerd (and the snapshotter), the Snapshots service the root filesystem is
    built with (``snapshots``, calls naming ``snapshotter``; through containerd, or the snapshotter's own
    socket), and the proxy that counts the registry's bytes. ``known_as``: the snapshotter's name for
    containerd's container record ("" when containerd does not reach it)."""

    sandbox: Sandbox
    containerd: ManagedContainerd
    mirror: MeteredMirror
    snapshots: SnapshotsService
    snapshotter: str
    known_as: str
    via: str
    fuse_mounts: Callable[[], int] = lambda: 0
    prefetch_loaded: Callable[[], list[PrefetchLoaded]] = list


def leased_client(
    containerd: ManagedContainerd, namespace: str, stack: contextlib.ExitStack
) -> ContainerdClient:
    """A client of the variant's containerd, in ``namespace`` (made if needed), whose every call is in a
    lease held until the variant ends: what it makes (snapshots) is safe from garbage collection till then."""
    client = stack.enter_context(ContainerdClient(containerd.address, namespace))
    client.namespaces.ensure(namespace)
    stack.enter_context(client.lease())
    return client

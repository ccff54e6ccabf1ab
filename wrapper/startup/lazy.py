"""The lazy variant's daemons: soci-snapshotter-grpc as containerd's ``soci`` proxy snapshotter, as a node that
runs SOCI images has it: its default pull modes (SOCI index manifest v2 only: v1 is off since v0.10),
background fetch on, and ``[prefetch] enable = true`` (the spans an index's prefetch artifacts name are fetched
before the layer is mounted).

Both daemons run inside the variant's sandbox, so containerd's shims see the snapshotter's FUSE mounts under
the overlay that is the container's root filesystem. The snapshotter reaches the registry through the run's
counting proxy (its mirror for the image's registry). The layers are prepared with the labels of a CRI pull
(rootfs.py): through containerd when it passes namespaces on to proxy snapshotters (1.7 and later), else
(containerd 1.6) on the snapshotter's own Snapshots API, whose mounts containerd's runtime takes all the same.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wrapper.containerd.client import ContainerdClient
from wrapper.core.errors import MissingDependencyError
from wrapper.core.reference import Reference
from wrapper.registry.client import RegistryClient
from wrapper.soci.snapshotter import RegistryAccess, SnapshotterConfig, SnapshotterDaemon, check_snapshotter
from wrapper.startup.daemon import (
    SNAPSHOTTER_PLUGIN,
    Daemons,
    leased_client,
    sandboxed_containerd,
)
from wrapper.startup.meter import MeteredMirror
from wrapper.startup.report import PrefetchLoaded
from wrapper.startup.sandbox import Sandbox

# The snapshotter's stock behaviour (its config/config.toml in v0.15.0), prefetch turned on.
STOCK_WITH_PREFETCH = SnapshotterConfig(soci_v1=False, soci_v2=True, background_fetch=True, prefetch=True)


def forwards_namespace(version: str | None) -> bool:
    """Whether this containerd passes the caller's namespace on to a proxy snapshotter (1.7 and later; 1.6
    does not, and the snapshotter then fails every remote Prepare)."""
    match = re.match(r"v?(\d+)\.(\d+)", version or "")
    return match is None or (int(match.group(1)), int(match.group(2))) >= (1, 7)


def start_lazy(
    reference: Reference,
    registry: RegistryClient,
    sandbox: Sandbox,
    mirror: MeteredMirror,
    work: Path,
    stack: contextlib.ExitStack,
    *,
    containerd_bin: str,
    snapshotter_bin: str | None,
    namespace: str,
) -> Daemons:
    binary, why = check_snapshotter(snapshotter_bin)
    if binary is None:
        raise MissingDependencyError(
            f"the lazy start needs soci-snapshotter-grpc: {why}",
            hint="or run only the full pull with --no-lazy",
        )
    # The snapshotter is told the image lives at the counting proxy (the CRI labels name it so): it fetches
    # everything from there, in plain HTTP on loopback, the SOCI index and zTOCs too (those it fetches from the
    # image's registry itself, whatever mirror it is given), and the proxy fetches from the registry.
    creds = registry.credentials.get(reference.registry)
    access = RegistryAccess(
        host=mirror.address,
        plain_http=True,
        username=creds.username if creds else None,
        password=creds.password if creds else None,
    )
    snapshotter = SnapshotterDaemon(
        binary, work / "snapshotter", access, STOCK_WITH_PREFETCH, launcher=sandbox.launcher()
    )
    stack.callback(snapshotter.stop)
    containerd = sandboxed_containerd(
        sandbox, work / "containerd", binary=containerd_bin, snapshotter_address=snapshotter.address
    )
    stack.enter_context(containerd)
    snapshotter.start(containerd.address)
    version = containerd.binary_version
    client = leased_client(containerd, namespace, stack)
    if forwards_namespace(version):
        snapshots, name, known_as = client.snapshots, SNAPSHOTTER_PLUGIN, SNAPSHOTTER_PLUGIN
        via = f"containerd {version}, proxy snapshotter {SNAPSHOTTER_PLUGIN!r}"
    else:
        # The snapshotter's own socket serves the same API (it ignores the snapshotter's name in each call).
        snapshots = stack.enter_context(ContainerdClient(snapshotter.address, namespace)).snapshots
        name, known_as = "", ""
        via = (
            f"the snapshotter's own Snapshots API (containerd {version} does not pass namespaces on to proxy "
            "snapshotters); containerd runs the container on its mounts"
        )
    snapshotter.wait_reachable(
        lambda: snapshots.stat("soci-wrapper-probe", snapshotter=name, timeout=2.0), via=via
    )
    return Daemons(
        sandbox,
        containerd,
        mirror,
        snapshots,
        name,
        known_as,
        via,
        fuse_mounts=lambda: len(snapshotter.fuse_mounts()),
        prefetch_loaded=lambda: prefetch_loaded(snapshotter.log_entries()),
    )


_LOADING = re.compile(r"^Loading prefetch artifact (sha256:[0-9a-f]{64})$")
_LOADED = re.compile(r"^Successfully loaded prefetch artifact with (\d+) span ranges$")


def prefetch_loaded(entries: Sequence[dict[str, Any]]) -> list[PrefetchLoaded]:
    """The prefetch artifacts the snapshotter's log says it loaded, per layer (its entries' ``src`` ends with
    the layer digest): it logs "Loading prefetch artifact D", fetches the spans, then "resolved layer", and only
    then mounts the layer (soci-snapshotter v0.15.0, fs/layer/layer.go)."""
    artifacts: dict[str, str] = {}
    ranges: dict[str, int] = {}
    for entry in entries:
        layer = str(entry.get("src", "")).rpartition("/")[2]
        message = str(entry.get("msg", ""))
        if (loading := _LOADING.match(message)) is not None:
            artifacts.setdefault(layer, loading.group(1))
        elif (loaded := _LOADED.match(message)) is not None:
            ranges.setdefault(layer, int(loaded.group(1)))
    return [PrefetchLoaded(layer, artifact, ranges.get(layer)) for layer, artifact in artifacts.items()]

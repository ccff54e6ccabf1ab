"""The config of a containerd that soci-wrapper runs: every file of the daemon in its work directory, only the
plugins a run needs, and what a caller adds (proxy plugins such as the SOCI snapshotter; plugins it needs that
are off by default, such as the runtime to run containers)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

# Plugins we do not need: Kubernetes (CRI), running containers, snapshotters that only log errors here,
# and "opt", which would create /opt/containerd. Content, metadata, leases, images, namespaces,
# introspection, version, gc and the overlayfs/native snapshotters stay.
# containerd 1.x (config version 2):
DISABLED_PLUGINS_1 = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)
# containerd 2.x (config version 3) ignores IDs it does not know, so the list uses its own IDs: cgroups and
# restart were renamed, aufs and the v1 runtime are gone. 2.x adds more around running containers (CRI's
# image and runtime plugins, sandboxes, shims, NRI, whose socket would live in /var/run/nri), which log
# "failed to load plugin" warnings without the tasks service; and plugins that only log why they are skipped
# here (erofs needs mkfs.erofs, blockfile a scratch file, tracing an endpoint).
DISABLED_PLUGINS_2 = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.runtime.v2.task",
    "io.containerd.shim.v1.manager",
    "io.containerd.monitor.task.v1.cgroups",
    "io.containerd.monitor.container.v1.restart",
    "io.containerd.internal.v1.opt",
    "io.containerd.nri.v1.nri",
    "io.containerd.grpc.v1.sandboxes",
    "io.containerd.grpc.v1.sandbox-controllers",
    "io.containerd.sandbox.controller.v1.shim",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.differ.v1.erofs",
    "io.containerd.mount-handler.v1.erofs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.ttrpc.v1.otelttrpc",
)


@dataclass(frozen=True)
class ProxyPlugin:
    """A plugin served by another process over a socket (containerd's ``[proxy_plugins.NAME]``): e.g. the
    SOCI snapshotter, ``ProxyPlugin("soci", "snapshot", "/run/soci.sock")``."""

    name: str
    type: str  # "snapshot", "content", ...
    address: str


def major_version(version: str) -> int:
    """The major release of a containerd version string (``1.6.20~ds1`` → 1, ``v2.2.6`` → 2)."""
    match = re.match(r"v?(\d+)\.", version)
    if match is None:
        raise ValueError(f"not a containerd version: {version!r}")
    return int(match.group(1))


def render_config(
    *,
    root: Path,
    state: Path,
    address: str,
    major: int = 1,
    proxy_plugins: Sequence[ProxyPlugin] = (),
    enable_plugins: Collection[str] = (),
) -> str:
    """A containerd config that keeps all of the daemon's files in our work directory.

    ``major`` is the daemon's major release: 1 gets a version 2 config, 2 and later version 3 (which 1.x
    refuses, and from which 2.x needs no migration) with 2.x's plugin IDs. ``proxy_plugins`` are added;
    ``enable_plugins`` (plugin IDs) are taken off the list of plugins disabled by default.
    """

    def q(value: object) -> str:  # JSON string escapes are valid TOML basic strings
        return json.dumps(str(value))

    config_version, plugins = (3, DISABLED_PLUGINS_2) if major >= 2 else (2, DISABLED_PLUGINS_1)
    disabled = ", ".join(q(p) for p in plugins if p not in enable_plugins)
    proxies = "\n[proxy_plugins]\n" if proxy_plugins else ""
    for plugin in proxy_plugins:
        proxies += f"  [proxy_plugins.{q(plugin.name)}]\n"
        proxies += f"    type = {q(plugin.type)}\n    address = {q(plugin.address)}\n"
    return (
        "# Written by soci-wrapper for a private containerd; removed when the daemon stops.\n"
        f"version = {config_version}\n"
        f"root = {q(root)}\n"
        f"state = {q(state)}\n"
        f"disabled_plugins = [{disabled}]\n"
        "\n[grpc]\n"
        f"  address = {q(address)}\n"
        f"  max_recv_message_size = {16 * 1024 * 1024}\n"
        f"  max_send_message_size = {16 * 1024 * 1024}\n"
    ) + proxies

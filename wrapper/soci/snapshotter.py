"""soci-snapshotter-grpc, the SOCI snapshotter, as a daemon of ours: found, configured, started, stopped.

It runs as a proxy snapshotter of a private containerd (``ManagedContainerd(proxy_plugins=[daemon.plugin])``):
its own root, config and socket in a work directory, and a mount namespace of its own (``unshare --mount``), so
that its FUSE mounts vanish with it whatever happens. Its config enables the pull modes asked for
(``[pull_modes.soci_v1]`` for v1 indexes) and, for a plain-HTTP registry, a mirror ``http://HOST:PORT`` (the
snapshotter fetches the index, the zTOCs and the layers' spans itself). Credentials reach it through a private
``DOCKER_CONFIG`` (``wrapper.registry.dockerconfig``), never its command line.

The process supervisor starts and stops it (and ties it to soci-wrapper's life); ``stop`` also undoes any
mount of it left in our namespace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.containerd.daemon import ProxyPlugin
from wrapper.core.errors import ContainerdError, MissingDependencyError
from wrapper.core.pins import SOCI_VERSION
from wrapper.core.util import one_line
from wrapper.registry.dockerconfig import PrivateDockerConfig
from wrapper.system import cleanup
from wrapper.system.binaries import Lookup, find
from wrapper.system.supervisor import Child, supervisor

log = logging.getLogger("wrapper.soci.snapshotter")

PLUGIN_NAME = "soci"  # its name among containerd's proxy plugins
FUSE_TYPE = "fuse.rawBridge"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_MAX_SOCKET_PATH = 100
FIX_HINT = "run scripts/bootstrap.sh, set SOCI_SNAPSHOTTER_BIN or pass --snapshotter-bin"


def lookup_snapshotter(explicit: str | None = None) -> Lookup:
    """``--snapshotter-bin``, then ``$SOCI_SNAPSHOTTER_BIN``, then this Python's scripts directory, then PATH."""
    return find(
        "soci-snapshotter-grpc", explicit=explicit, flag="--snapshotter-bin", env_var="SOCI_SNAPSHOTTER_BIN"
    )


def find_snapshotter(explicit: str | None = None) -> str | None:
    return lookup_snapshotter(explicit).path


def snapshotter_version(binary: str) -> str:
    """``soci-snapshotter-grpc --version`` (``v0.15.0 <revision>``); MissingDependencyError if it is not one."""
    try:
        out = supervisor().run([binary, "--version"], name="soci-snapshotter-grpc --version", timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MissingDependencyError(
            f"soci-snapshotter-grpc at {binary} does not run: {one_line(exc)}"
        ) from exc
    text = out.stdout.strip()
    if "version" not in text or "soci-snapshotter-grpc" not in text:
        raise MissingDependencyError(
            f"{binary} is not soci-snapshotter-grpc (its --version says {one_line(text)[:80]!r})",
            hint=FIX_HINT,
        )
    return text.split("version", 1)[1].strip()


def check_snapshotter(explicit: str | None) -> tuple[str | None, str | None]:
    """(the binary, None) if a usable soci-snapshotter-grpc of the pinned series is found, else (None, why)."""
    lookup = lookup_snapshotter(explicit)
    if lookup.path is None:
        where = f" at {explicit}" if explicit else ""
        return None, (
            f"soci-snapshotter-grpc not found{where} (scripts/bootstrap.sh builds it into "
            ".deps/bin; or set SOCI_SNAPSHOTTER_BIN / pass --snapshotter-bin)"
        )
    try:
        version = snapshotter_version(lookup.path)
    except MissingDependencyError as exc:
        return None, exc.message
    if not version.startswith(".".join(SOCI_VERSION.split(".")[:2])):
        return None, (
            f"soci-snapshotter-grpc at {lookup.path} is {version.split()[0]}, not of the {SOCI_VERSION} series"
        )
    return lookup.path, None


@dataclass
class RegistryAccess:
    """What the snapshotter needs to reach the image's registry."""

    host: str
    plain_http: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    mirror: str | None = None  # HOST:PORT of a plain-HTTP mirror to fetch through instead (a metering proxy)


@dataclass(frozen=True)
class SnapshotterConfig:
    """The snapshotter's behaviour: which index versions it serves, and whether it fetches more than is read
    (``background_fetch``; off for verify, whose reads must prove lazy loading) or prefetches listed files."""

    soci_v1: bool = False
    soci_v2: bool = True
    background_fetch: bool = False
    prefetch: bool = False


def render_snapshotter_config(
    *, containerd_address: str, config: SnapshotterConfig, registry: RegistryAccess
) -> str:
    q = json.dumps
    lines = [
        "# Written by soci-wrapper for a private soci-snapshotter-grpc; removed when it stops.",
        "no_prometheus = true",
        "",
        "[content_store]",
        '  type = "soci"',
        f"  containerd_address = {q(containerd_address)}",
        "",
        "[background_fetch]",
        f"  disable = {str(not config.background_fetch).lower()}",
        "",
        "[prefetch]",
        f"  enable = {str(config.prefetch).lower()}",
        "",
        "[pull_modes]",
        "  [pull_modes.soci_v1]",
        f"    enable = {str(config.soci_v1).lower()}",
        "  [pull_modes.soci_v2]",
        f"    enable = {str(config.soci_v2).lower()}",
    ]
    mirror = registry.mirror or (registry.host if registry.plain_http else None)
    if mirror is not None:
        lines += [
            "",
            f"[[resolver.host.{q(registry.host)}.mirrors]]",
            f"  host = {q('http://' + mirror)}",
            "  insecure = true",
        ]
    return "\n".join(lines) + "\n"


class SnapshotterDaemon:
    """soci-snapshotter-grpc, started and stopped by us, in ``work_dir`` and a private mount namespace."""

    def __init__(
        self,
        binary: str,
        work_dir: Path,
        registry: RegistryAccess,
        config: SnapshotterConfig,
        *,
        launcher: Sequence[str] | None = None,
    ) -> None:
        """``launcher``: the command prefix it runs under (default ``unshare --mount``: a mount namespace of
        its own), e.g. one that joins a sandbox's namespaces."""
        self.binary = binary
        self.launcher = launcher
        self.work_dir = work_dir
        self.root = work_dir / "root"
        self.registry = registry
        self.config = config
        self._socket_dir: Path | None = None
        # The socket's path is known before the daemon starts: containerd's config names it.
        address = work_dir / "snapshotter.sock"
        if len(os.fsencode(address)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="swsn-", dir="/tmp"))
            supervisor().own(self._socket_dir)
            address = self._socket_dir / "snapshotter.sock"
        self.address = str(address)
        self._proc: Child | None = None
        self._auth: PrivateDockerConfig | None = None

    @property
    def plugin(self) -> ProxyPlugin:
        """The proxy plugin entry of containerd's config that names this daemon."""
        return ProxyPlugin(PLUGIN_NAME, "snapshot", self.address)

    @property
    def log_path(self) -> Path:
        return self.work_dir / "soci-snapshotter-grpc.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None or self._proc.poll() is not None else self._proc.pid

    def start(self, containerd_address: str) -> None:
        """Start the daemon (for the containerd at ``containerd_address``, whose content store it reads
        manifests and configs from) and return once its socket is there."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        config = self.work_dir / "config.toml"
        config.write_text(
            render_snapshotter_config(
                containerd_address=containerd_address, config=self.config, registry=self.registry
            )
        )
        argv = [self.binary, "--address", self.address, "--root", str(self.root), "--config", str(config)]
        argv += ["--log-level", "debug"]
        if self.launcher is not None:
            argv = [*self.launcher, *argv]
        elif (unshare := shutil.which("unshare")) is not None:
            # Its FUSE mounts live (and die) in a mount namespace of its own.
            argv = [unshare, "--mount", "--propagation", "private", "--", *argv]
        access = self.registry
        self._auth = PrivateDockerConfig(
            access.host, access.username, access.password, ca_file=access.ca_file, parent=self.work_dir,
            prefix="auth-",
        )  # fmt: skip
        env = {**os.environ, **self._auth.open()}
        try:
            self._proc = supervisor().start(
                argv, name="soci-snapshotter-grpc", log_file=self.log_path, env=env
            )
        except OSError as exc:
            self.stop()
            raise MissingDependencyError(f"cannot start {self.binary}: {exc.strerror or exc}") from None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ContainerdError(
                    f"soci-snapshotter-grpc exited during startup (status {self._proc.returncode})",
                    detail=self.log_tail(),
                )
            if os.path.exists(self.address):
                return
            time.sleep(0.05)
        raise ContainerdError(
            f"soci-snapshotter-grpc did not open its socket within {_START_TIMEOUT:g} s",
            detail=self.log_tail(),
        )

    def wait_reachable(self, probe: Callable[[], object], *, via: str = "", timeout: float = 30.0) -> None:
        """Until ``probe`` (a Snapshots call, such as a Stat of a snapshot that does not exist, which answers
        NOT_FOUND) reaches the snapshotter without a ContainerdError: containerd dials a proxy plugin lazily,
        and retries with a backoff. ``via``: the way the calls go, for the error."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.pid is None:
                raise ContainerdError("soci-snapshotter-grpc stopped", detail=self.log_tail())
            try:
                probe()
                return
            except ContainerdError as exc:
                last = exc.message
            time.sleep(0.1)
        through = f" through {via}" if via else ""
        raise ContainerdError(
            f"soci-snapshotter-grpc cannot be reached{through} within {timeout:g} s: {last}",
            detail=self.log_tail(),
        )

    def fuse_mounts(self) -> list[str]:
        """Mount points of the snapshotter's FUSE mounts under its root (as its namespace sees them)."""
        pid = self.pid
        source = Path(f"/proc/{pid}/mountinfo") if pid else Path("/proc/self/mountinfo")
        return [
            m for m, kind in cleanup.mounts(source) if kind == FUSE_TYPE and cleanup.is_under(m, self.root)
        ]

    def path(self, mountpoint: str, name: str) -> Path:
        """``name`` inside ``mountpoint``, reachable from here (through /proc/PID/root when namespaced)."""
        inside = Path(mountpoint) / name.lstrip("/")
        pid = self.pid
        return Path(f"/proc/{pid}/root{inside}") if pid else inside

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_entries(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL), then make sure nothing of it is still mounted here."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(_STOP_TIMEOUT)
        for mountpoint in cleanup.unmount_under(self.root):
            log.warning("unmounted %s, left behind by soci-snapshotter-grpc", mountpoint)
        if self._auth is not None:
            self._auth.close()
            self._auth = None
        if self._socket_dir is not None:
            supervisor().release(self._socket_dir, remove=True)
            self._socket_dir = None

"""Level 3, the consumer: the real SOCI snapshotter pulls the image lazily, and files read through it match.

soci-snapshotter-grpc (built from the same source as soci) runs as a proxy snapshotter of a private
containerd: its own root, config and socket in the run's directory, in a private mount namespace
(``unshare --mount``) so that its FUSE mounts vanish with it whatever happens. Its config enables the pull
mode of the index being verified (``[pull_modes.soci_v1]`` for v1) and, for a plain-HTTP registry, a mirror
``http://HOST:PORT`` (the snapshotter fetches the index, the zTOCs and the layers' spans itself).

The pull is a small client of containerd's Snapshots API that does what containerd's unpacker does for a CRI
or nerdctl pull: for each layer in order, Prepare ``extract-<unique> <chainID>`` with the parent chain ID and
the labels a CRI pull passes (``containerd.io/snapshot.ref`` and ``containerd.io/snapshot/cri.image-ref``,
``.manifest-digest``, ``.layer-digest``, ``.image-layers``). A remote snapshotter answers ALREADY_EXISTS
when it has prepared the layer itself: lazily (a FUSE mount, ``fuse.rawBridge``, under its root) when the
index has a zTOC for it, else by downloading it whole. A layer with a zTOC that does not appear as a FUSE
mount was not served lazily; the snapshotter's log says why. Then a sample of files (the content level's) is
read through each FUSE mount and compared with the layer's tar stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from wrapper.containerd._proto import snapshots_pb2, snapshots_pb2_grpc
from wrapper.containerd.channel import Connection, status_code, status_details
from wrapper.containerd.daemon import ManagedContainerd, render_config
from wrapper.core.errors import ContainerdError, MissingDependencyError
from wrapper.core.pins import SOCI_VERSION
from wrapper.core.progress import Reporter, short_digest
from wrapper.core.util import one_line
from wrapper.registry.client import RegistryClient
from wrapper.verify.content_checks import FileDigest, LayerSample
from wrapper.verify.registry_checks import Image, Target, read_small
from wrapper.verify.report import LayerResult

log = logging.getLogger("wrapper.verify")

SNAPSHOTTER = "soci"  # its name in containerd's proxy_plugins
FUSE_TYPE = "fuse.rawBridge"
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
IMAGE_REF_LABEL = "containerd.io/snapshot/cri.image-ref"
MANIFEST_DIGEST_LABEL = "containerd.io/snapshot/cri.manifest-digest"
LAYER_DIGEST_LABEL = "containerd.io/snapshot/cri.layer-digest"
IMAGE_LAYERS_LABEL = "containerd.io/snapshot/cri.image-layers"
_MAX_LABEL_BYTES = 4096  # containerd's limit for a label (key and value)
_READ_TIMEOUT = 60.0
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_MAX_SOCKET_PATH = 100


# -- finding the daemon and what it needs ----------------------------------------------------------------------
def find_snapshotter(explicit: str | None = None, *, project_root: Path | None = None) -> str | None:
    """``--snapshotter-bin``, then ``$SOCI_SNAPSHOTTER_BIN``, then ``.deps/bin/soci-snapshotter-grpc``, then PATH."""
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("SOCI_SNAPSHOTTER_BIN"):
        candidates.append(os.environ["SOCI_SNAPSHOTTER_BIN"])
    root = project_root or Path(__file__).resolve().parents[2]
    candidates.append(str(root / ".deps" / "bin" / "soci-snapshotter-grpc"))
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
        if explicit and candidate == explicit:
            return None
    return shutil.which("soci-snapshotter-grpc")


def snapshotter_version(binary: str) -> str:
    """``soci-snapshotter-grpc --version`` (``v0.15.0 <revision>``); MissingDependencyError if it is not one."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise MissingDependencyError(
            f"soci-snapshotter-grpc at {binary} does not run: {one_line(exc)}"
        ) from exc
    if "version" not in out or "soci-snapshotter-grpc" not in out:
        raise MissingDependencyError(
            f"{binary} is not soci-snapshotter-grpc (its --version says {one_line(out)[:80]!r})",
            hint="run scripts/bootstrap.sh, set SOCI_SNAPSHOTTER_BIN or pass --snapshotter-bin",
        )
    return out.split("version", 1)[1].strip()


def consumer_unavailable(explicit_bin: str | None, attached: bool) -> tuple[str | None, str | None]:
    """(the snapshotter binary, None) when the consumer level can run here, else (None, why not)."""
    if attached:
        return None, (
            "needs soci-wrapper's own containerd (the snapshotter is one of its proxy plugins), "
            "not --containerd-address"
        )
    if os.geteuid() != 0:
        return None, f"needs root for FUSE mounts and a private containerd (running as uid {os.geteuid()})"
    if not os.path.exists("/dev/fuse"):
        return None, "/dev/fuse does not exist (no FUSE on this machine or in this container)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = "fuse"
    if "fuse" not in filesystems.split():
        return None, "the kernel has no fuse filesystem (/proc/filesystems)"
    binary = find_snapshotter(explicit_bin)
    if binary is None:
        where = f" at {explicit_bin}" if explicit_bin else ""
        return None, (
            f"soci-snapshotter-grpc not found{where} (scripts/bootstrap.sh builds it into "
            ".deps/bin; or set SOCI_SNAPSHOTTER_BIN / pass --snapshotter-bin)"
        )
    try:
        version = snapshotter_version(binary)
    except MissingDependencyError as exc:
        return None, exc.message
    if not version.startswith(".".join(SOCI_VERSION.split(".")[:2])):
        return (
            None,
            f"soci-snapshotter-grpc at {binary} is {version.split()[0]}, not of the {SOCI_VERSION} series",
        )
    return binary, None


# -- containerd with the snapshotter as a proxy plugin -------------------------------------------------------------
class ProxyContainerd(ManagedContainerd):
    """A ManagedContainerd whose config also names the SOCI snapshotter (a proxy plugin at ``proxy_address``)."""

    def __init__(self, work_dir: Path, *, binary: str = "containerd", proxy_address: str) -> None:
        super().__init__(work_dir, binary=binary, keep_work_dir=True)
        self.proxy_address = proxy_address

    def _spawn(self, binary: str, major: int) -> None:
        config = self.work_dir / "config.toml"
        base = render_config(
            root=self.work_dir / "root", state=self.work_dir / "state", address=self.address, major=major
        )
        config.write_text(
            base + f'\n[proxy_plugins]\n  [proxy_plugins.{SNAPSHOTTER}]\n    type = "snapshot"\n'
            f"    address = {json.dumps(self.proxy_address)}\n"
        )
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the daemon's lifetime
        try:
            self._proc = subprocess.Popen(
                [binary, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ContainerdError(f"cannot start {binary}: {exc.strerror or exc}") from None


# -- the snapshotter daemon ------------------------------------------------------------------------------------------
@dataclass
class RegistryAccess:
    """What the snapshotter needs to reach the image's registry."""

    host: str
    plain_http: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None


def render_snapshotter_config(
    *, containerd_address: str, soci_v1: bool, soci_v2: bool, registry: RegistryAccess
) -> str:
    q = json.dumps
    lines = [
        "# Written by soci-wrapper verify for a private soci-snapshotter-grpc; removed when it stops.",
        "no_prometheus = true",
        "",
        "[content_store]",
        '  type = "soci"',
        f"  containerd_address = {q(containerd_address)}",
        "",
        "[background_fetch]",
        "  disable = true  # every byte read is fetched on demand: the reads prove lazy loading",
        "",
        "[pull_modes]",
        "  [pull_modes.soci_v1]",
        f"    enable = {str(soci_v1).lower()}",
        "  [pull_modes.soci_v2]",
        f"    enable = {str(soci_v2).lower()}",
    ]
    if registry.plain_http:
        lines += [
            "",
            f"[[resolver.host.{q(registry.host)}.mirrors]]",
            f"  host = {q('http://' + registry.host)}",
            "  insecure = true",
        ]
    return "\n".join(lines) + "\n"


class SnapshotterDaemon:
    """soci-snapshotter-grpc, started and stopped by us, in ``work_dir`` and a private mount namespace."""

    def __init__(
        self, binary: str, work_dir: Path, registry: RegistryAccess, *, soci_v1: bool, soci_v2: bool
    ) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.root = work_dir / "root"
        self.registry = registry
        self.soci_v1, self.soci_v2 = soci_v1, soci_v2
        self._socket_dir: Path | None = None
        # The socket's path is known before the daemon starts: containerd's config names it.
        address = work_dir / "snapshotter.sock"
        if len(os.fsencode(address)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="swsn-", dir="/tmp"))
            address = self._socket_dir / "snapshotter.sock"
        self.address = str(address)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._env_dir: Path | None = None

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
                containerd_address=containerd_address,
                soci_v1=self.soci_v1,
                soci_v2=self.soci_v2,
                registry=self.registry,
            )
        )
        argv = [self.binary, "--address", self.address, "--root", str(self.root), "--config", str(config)]
        argv += ["--log-level", "debug"]
        unshare = shutil.which("unshare")
        if unshare is not None:
            # Its FUSE mounts live (and die) in a mount namespace of its own.
            argv = [unshare, "--mount", "--propagation", "private", "--", *argv]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the daemon's lifetime
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise MissingDependencyError(f"cannot start {self.binary}: {exc.strerror or exc}") from None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        access = self.registry
        self._env_dir = Path(tempfile.mkdtemp(prefix="auth-", dir=self.work_dir))
        os.chmod(self._env_dir, 0o700)
        auths: dict[str, Any] = {}
        if access.username is not None:
            import base64

            token = base64.b64encode(f"{access.username}:{access.password or ''}".encode()).decode()
            auths[access.host] = {"auth": token}
        path = self._env_dir / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"auths": auths}, fh)
        env["DOCKER_CONFIG"] = str(self._env_dir)
        if access.ca_file:
            bundle = self._env_dir / "ca-bundle.pem"
            system = Path("/etc/ssl/certs/ca-certificates.crt")
            bundle.write_bytes(
                (system.read_bytes().rstrip(b"\n") + b"\n" if system.exists() else b"")
                + Path(access.ca_file).read_bytes()
            )
            env["SSL_CERT_FILE"] = str(bundle)
        return env

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

    def fuse_mounts(self) -> list[str]:
        """Mount points of the snapshotter's FUSE mounts under its root (as its namespace sees them)."""
        pid = self.pid
        source = Path(f"/proc/{pid}/mountinfo") if pid else Path("/proc/self/mountinfo")
        return [m for m, fstype in _mounts(source) if fstype == FUSE_TYPE and _under(m, self.root)]

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
        """Stop the daemon (SIGTERM, then SIGKILL), then make sure nothing of it is still mounted."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(_STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        unmount_under(self.root)
        for path in (self._socket_dir, self._env_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self._socket_dir = self._env_dir = None


def _mounts(mountinfo: Path) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of a mountinfo file."""
    out: list[tuple[str, str]] = []
    try:
        text = mountinfo.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mountpoint = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        out.append((mountpoint, right.split()[0] if right.split() else ""))
    return out


def _under(path: str, root: Path) -> bool:
    root_text = str(root.resolve())
    return path == root_text or path.startswith(root_text + "/")


def unmount_under(root: Path) -> list[str]:
    """Detach whatever is still mounted under ``root`` in our own namespace (deepest first)."""
    left = sorted(
        (m for m, _ in _mounts(Path("/proc/self/mountinfo")) if _under(m, root)), key=len, reverse=True
    )
    for mountpoint in left:
        log.warning("unmounting %s left behind by soci-snapshotter-grpc", mountpoint)
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    return left


# -- the lazy pull -----------------------------------------------------------------------------------------------
def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of each layer (OCI image spec): sha256 of "<parent chain ID> <diff ID>"."""
    out: list[str] = []
    for diff in diff_ids:
        out.append(diff if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def image_layers_label(digests: list[str]) -> str:
    """This layer's and the following layers' digests, as many as fit containerd's label size limit."""
    value = ""
    for digest in digests:
        item = digest if not value else "," + digest
        if len(IMAGE_LAYERS_LABEL) + len(value) + len(item) > _MAX_LABEL_BYTES:
            break
        value += item
    return value


class SnapshotsClient:
    """containerd's Snapshots service, for one snapshotter, in one namespace."""

    def __init__(self, address: str, namespace: str, snapshotter: str = SNAPSHOTTER) -> None:
        self._conn = Connection(address, namespace, timeout=120.0)
        self._stub = snapshots_pb2_grpc.SnapshotsStub(self._conn.channel)
        self.snapshotter = snapshotter
        self.via = f"containerd (proxy snapshotter {snapshotter!r})"

    def wait_ready(self, daemon: SnapshotterDaemon, timeout: float = _START_TIMEOUT) -> None:
        """Until a request reaches the snapshotter this way (containerd dials a proxy plugin lazily, and
        retries with a backoff): Stat of a snapshot that does not exist answers NOT_FOUND once it does."""
        deadline = time.monotonic() + timeout
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key="soci-wrapper-probe")
        last = ""
        while time.monotonic() < deadline:
            if daemon.pid is None:
                raise ContainerdError("soci-snapshotter-grpc stopped", detail=daemon.log_tail())
            try:
                self._stub.Stat(request, metadata=self._conn.metadata(), timeout=2.0)
                return
            except grpc.RpcError as exc:
                if status_code(exc) == grpc.StatusCode.NOT_FOUND:
                    return
                last = status_details(exc)
            time.sleep(0.1)
        raise ContainerdError(
            f"soci-snapshotter-grpc cannot be reached through {self.via} within {timeout:g} s: {last}",
            detail=daemon.log_tail(),
        )

    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Any] | None:
        """Prepare ``key``: None when the snapshotter committed the target itself (ALREADY_EXISTS: a remote
        snapshotter's answer), else the mounts it wants the runtime to unpack into."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        try:
            response = self._stub.Prepare(request, metadata=self._conn.metadata(), timeout=self._conn.timeout)
        except grpc.RpcError as exc:
            if status_code(exc) == grpc.StatusCode.ALREADY_EXISTS:
                return None
            raise self._conn.error(exc, "snapshots.Prepare", timeout=self._conn.timeout) from None
        return list(response.mounts)

    def stat(self, key: str) -> Any | None:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        try:
            return self._stub.Stat(request, metadata=self._conn.metadata(), timeout=self._conn.timeout).info
        except grpc.RpcError as exc:
            if status_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._conn.error(exc, "snapshots.Stat", timeout=self._conn.timeout) from None

    def remove(self, key: str) -> None:
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        try:
            self._stub.Remove(request, metadata=self._conn.metadata(), timeout=self._conn.timeout)
        except grpc.RpcError as exc:
            log.debug("removing snapshot %s: %s", key, status_details(exc))

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class Prepared:
    """A layer the snapshotter prepared itself: lazily (its new FUSE mount point) or not (None)."""

    mountpoint: str | None


@dataclass
class ConsumerSession:
    """The consumer level over one containerd (with the snapshotter as its proxy plugin)."""

    daemon: SnapshotterDaemon
    snapshots: SnapshotsClient
    registry: RegistryClient
    reporter: Reporter
    done: dict[str, str | None] = field(default_factory=dict)  # chain ID -> its FUSE mount point (or None)

    def verify(self, image: Image, target: Target, samples: Mapping[str, LayerSample]) -> None:
        result = target.result
        config = json.loads(read_small(self.registry, image.reference, target.config))
        diff_ids = [str(d) for d in (config.get("rootfs") or {}).get("diff_ids", [])]
        if len(diff_ids) != len(target.layers):
            result.add("consumer", "lazy-pull", False, "the image config's diff_ids do not match its layers")
            return
        chains = chain_ids(diff_ids)
        digests = [x.digest for x in target.layers]
        mounted: list[str] = []
        for i, layer in enumerate(target.layers):
            report = result.layer(layer.digest)
            assert report is not None
            labels = {
                SNAPSHOT_REF_LABEL: chains[i],
                IMAGE_REF_LABEL: str(image.reference),
                MANIFEST_DIGEST_LABEL: target.manifest.digest,
                LAYER_DIGEST_LABEL: layer.digest,
                IMAGE_LAYERS_LABEL: image_layers_label(digests[i:]),
            }
            if chains[i] in self.done:  # shared with a platform verified before: prepared then
                mountpoint = self.done[chains[i]]
            else:
                outcome = self._prepare(chains[i], chains[i - 1] if i else "", labels, layer.digest)
                if isinstance(outcome, str):
                    report.add("consumer", "lazy-pull", False, outcome)
                    return
                mountpoint = outcome.mountpoint
                self.done[chains[i]] = mountpoint
            report.mountpoint = mountpoint
            report.lazy = mountpoint is not None
            if report.covered:
                if mountpoint is not None:
                    mounted.append(mountpoint)
                report.add(
                    "consumer",
                    "lazy",
                    mountpoint is not None,
                    f"mounted lazily by the snapshotter ({FUSE_TYPE} at {mountpoint})"
                    if mountpoint is not None
                    else "the snapshotter did not mount this layer lazily although the index has a zTOC for it"
                    + self._why(layer.digest),
                )
            elif mountpoint is not None:
                report.add(
                    "consumer", "lazy", True, f"mounted lazily ({FUSE_TYPE}) without a zTOC in the index?"
                )
            else:
                report.add(
                    "consumer", "lazy", True, "no zTOC: the snapshotter downloaded and unpacked it whole"
                )
        result.fuse_mounts = len(mounted)
        covered = sum(1 for x in result.layers if x.covered)
        result.add(
            "consumer",
            "lazy-pull",
            len(mounted) == covered,
            f"pulled through the SOCI snapshotter (via {self.snapshots.via}): {len(mounted)} of {covered} "
            f"indexed layers mounted lazily ({FUSE_TYPE}), {len(target.layers) - covered} other layers "
            "unpacked by the snapshotter",
        )
        for layer in target.layers:
            report = result.layer(layer.digest)
            assert report is not None
            sample = samples.get(layer.digest)
            if report.mountpoint is not None and sample is not None:
                self._read_files(report, sample)

    def _prepare(self, chain: str, parent: str, labels: dict[str, str], layer: str) -> Prepared | str:
        """Prepare one layer like containerd's unpacker; the new FUSE mount (if any), or what went wrong."""
        before = set(self.daemon.fuse_mounts())
        key = f"extract-{time.time_ns()}-{secrets.token_hex(3)} {chain}"
        try:
            mounts = self.snapshots.prepare(key, parent, labels)
        except ContainerdError as exc:
            return f"Prepare of this layer through the snapshotter failed: {exc.message}{self._why(layer)}"
        if mounts is not None:
            # The snapshotter handed the layer back to the runtime (no SOCI index it could use): we stop here.
            self.snapshots.remove(key)
            return (
                "the snapshotter did not prepare this layer itself (it defers to the container runtime, "
                f"as it does when it finds no usable SOCI index){self._why(layer)}"
            )
        if self.snapshots.stat(chain) is None:
            return f"the snapshotter answered that layer {chain} exists, but containerd has no such snapshot"
        new = [m for m in self.daemon.fuse_mounts() if m not in before]
        return Prepared(new[0] if new else None)

    def _why(self, layer: str) -> str:
        """The snapshotter's own words about ``layer`` (warnings and errors of its log)."""
        reasons = []
        for entry in self.daemon.log_entries():
            if entry.get("level") not in ("warning", "error", "fatal"):
                continue
            text = json.dumps(entry)
            if layer in text or "SOCI" in text or "soci" in str(entry.get("msg", "")):
                msg = str(entry.get("msg", ""))
                err = str(entry.get("error", ""))
                reasons.append(one_line(f"{msg}: {err}" if err else msg))
        return f" (soci-snapshotter-grpc: {reasons[-1][:400]})" if reasons else ""

    def _read_files(self, report: LayerResult, sample: LayerSample) -> None:
        assert report.mountpoint is not None
        results: dict[str, FileDigest | str] = {}

        def read_all() -> None:
            for name in sample.files:
                try:
                    results[name] = _digest(self.daemon.path(report.mountpoint or "", name))
                except OSError as exc:
                    results[name] = f"{exc.strerror or exc}"

        reader = threading.Thread(target=read_all, name="verify-fuse-read", daemon=True)
        reader.start()
        reader.join(_READ_TIMEOUT)
        if reader.is_alive():
            report.add(
                "consumer",
                "lazy-files",
                False,
                f"reading {len(sample.files)} files through the FUSE mount did not finish within "
                f"{_READ_TIMEOUT:g} s",
            )
            return
        mismatches, nbytes = [], 0
        for name, want in sample.files.items():
            got = results.get(name)
            if not isinstance(got, FileDigest):
                mismatches.append(f"{name}: {got}")
            elif got.size != want.size or got.sha256 != want.sha256:
                mismatches.append(
                    f"{name}: {got.size} bytes (sha256 {got.sha256[:12]}), the layer has {want.size}"
                )
            else:
                nbytes += got.size
        report.files_read_lazily = len(sample.files) - len(mismatches)
        report.add(
            "consumer",
            "lazy-files",
            not mismatches,
            f"{len(mismatches)} of {len(sample.files)} files read through the snapshotter's mount differ: "
            + "; ".join(mismatches[:3])
            if mismatches
            else f"{len(sample.files)} files read through the snapshotter's FUSE mount match the layer "
            f"({nbytes} bytes)",
        )


def _digest(path: Path) -> FileDigest:
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return FileDigest(size, hasher.hexdigest())


def forwards_namespace(containerd_version: str | None) -> bool:
    """Whether this containerd passes the caller's namespace on to a proxy snapshotter. containerd 1.6 does
    not (its gRPC server does not install the namespace interceptor, and the SOCI snapshotter then fails every
    remote Prepare with "context has no namespace attached"); 1.7 and later do."""
    match = re.match(r"v?(\d+)\.(\d+)", containerd_version or "")
    return match is None or (int(match.group(1)), int(match.group(2))) >= (1, 7)


@contextlib.contextmanager
def consumer_session(
    daemon: SnapshotterDaemon,
    *,
    containerd_address: str,
    containerd_version: str | None,
    namespace: str,
    registry: RegistryClient,
    reporter: Reporter,
) -> Iterator[ConsumerSession]:
    """Start ``daemon`` (containerd already names its socket) and yield a session; on the way out (also on
    an error or an interrupt) the daemon is stopped and nothing of it stays mounted.

    The session prepares snapshots through containerd's Snapshots API (snapshotter ``soci``), as a CRI pull
    does. With a containerd that does not forward namespaces to proxy snapshotters (1.6), it sends the same
    requests to the snapshotter's own Snapshots API instead (the snapshotter still reads manifests and
    configs from that containerd)."""
    try:
        daemon.start(containerd_address)
        if forwards_namespace(containerd_version):
            snapshots = SnapshotsClient(containerd_address, namespace)
            snapshots.via = (
                f"containerd {containerd_version or ''} (proxy snapshotter {SNAPSHOTTER!r})".replace(
                    "  ", " "
                )
            )
        else:
            snapshots = SnapshotsClient(daemon.address, namespace, snapshotter="")
            snapshots.via = (
                f"the snapshotter's own Snapshots API, as containerd {containerd_version} does not pass "
                "namespaces on to proxy snapshotters"
            )
        try:
            snapshots.wait_ready(daemon)
            yield ConsumerSession(daemon, snapshots, registry, reporter)
        finally:
            snapshots.close()
            reporter.info(f"    stopping soci-snapshotter-grpc ({len(daemon.fuse_mounts())} FUSE mounts)")
    finally:
        daemon.stop()


def describe_layer(report: LayerResult) -> str:
    return short_digest(report.digest)

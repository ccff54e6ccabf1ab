"""Level 3, the consumer: the real SOCI snapshotter pulls the image lazily, and files read through it match.

soci-snapshotter-grpc (``wrapper.soci.snapshotter``) runs as the proxy snapshotter ``soci`` of a private
containerd (``ManagedContainerd(proxy_plugins=...)``) with its default pull modes, as a stock snapshotter has
them (v0.10 and later: SOCI index manifest v2 only). A V2 index is verified with those. A V1 index is first
pulled with them too, and what a stock snapshotter does with it is reported (it hands the image back to the
container runtime: nothing is lazy; ``probe_default``); then a second snapshotter, ``soci-v1``, with
``[pull_modes.soci_v1] enable = true`` (its own root, socket and proxy plugin name, so that nothing of the
first pull is in its way), verifies that the index loads lazily once that line is in the config.

The pull uses containerd's Snapshots API (``wrapper.containerd.snapshots``) that does what containerd's unpacker does for a CRI
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
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ProxyPlugin
from wrapper.containerd.snapshots import SnapshotsService
from wrapper.core.errors import ContainerdError, WrapperError
from wrapper.core.progress import Reporter, short_digest
from wrapper.core.util import one_line
from wrapper.registry.client import RegistryClient
from wrapper.soci.pullmodes import V1_CONFIG_LINE, V1_OFF_SINCE, v1_config_hint
from wrapper.soci.snapshotter import FUSE_TYPE, PLUGIN_NAME, SnapshotterDaemon, check_snapshotter
from wrapper.verify.content_checks import FileDigest, LayerSample
from wrapper.verify.registry_checks import Image, Target, read_small
from wrapper.verify.report import LayerResult

log = logging.getLogger("wrapper.verify")

SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
IMAGE_REF_LABEL = "containerd.io/snapshot/cri.image-ref"
MANIFEST_DIGEST_LABEL = "containerd.io/snapshot/cri.manifest-digest"
LAYER_DIGEST_LABEL = "containerd.io/snapshot/cri.layer-digest"
IMAGE_LAYERS_LABEL = "containerd.io/snapshot/cri.image-layers"
_MAX_LABEL_BYTES = 4096  # containerd's limit for a label (key and value)
_READ_TIMEOUT = 60.0
_CALL_TIMEOUT = 120.0


# -- can it run here? -------------------------------------------------------------------------------------------
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
    return check_snapshotter(explicit_bin)


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


@dataclass(frozen=True)
class Prepared:
    """A layer the snapshotter prepared itself: lazily (its new FUSE mount point) or not (None)."""

    mountpoint: str | None


@dataclass(frozen=True)
class HandedBack:
    """A layer the snapshotter handed back to the container runtime (no SOCI index it uses): why, in words."""

    message: str


@dataclass(frozen=True)
class Consumer:
    """One snapshotter of the consumer level: its daemon, its name among containerd's proxy plugins, and its
    pull modes (the stock ones, or with v1 enabled)."""

    daemon: SnapshotterDaemon
    name: str = PLUGIN_NAME

    @property
    def default_modes(self) -> bool:
        return not self.daemon.config.soci_v1 and self.daemon.config.soci_v2

    @property
    def modes(self) -> str:
        """Its pull modes, for the report."""
        if self.default_modes:
            return "its default pull modes"
        v2 = "" if self.daemon.config.soci_v2 else ", v2 off"
        return f"{V1_CONFIG_LINE}{v2}"

    @property
    def plugin(self) -> ProxyPlugin:
        """Its entry among the proxy plugins of containerd's config."""
        return ProxyPlugin(self.name, "snapshot", self.daemon.address)


@dataclass
class ConsumerSession:
    """The consumer level over one containerd (with the snapshotter as its proxy plugin)."""

    consumer: Consumer
    snapshots: SnapshotsService  # through containerd (its proxy plugin), or on the snapshotter's own socket
    via: str  # which of the two, for the report
    registry: RegistryClient
    reporter: Reporter
    done: dict[str, str | None] = field(default_factory=dict)  # chain ID -> its FUSE mount point (or None)

    @property
    def daemon(self) -> SnapshotterDaemon:
        return self.consumer.daemon

    def _layer_labels(self, image: Image, target: Target) -> list[tuple[str, dict[str, str]]] | None:
        """Per layer, in order: its chain ID and the labels a CRI pull prepares it with; None when the image
        config's diff_ids do not match the manifest's layers."""
        config = json.loads(read_small(self.registry, image.reference, target.config))
        diff_ids = [str(d) for d in (config.get("rootfs") or {}).get("diff_ids", [])]
        if len(diff_ids) != len(target.layers):
            return None
        chains = chain_ids(diff_ids)
        digests = [x.digest for x in target.layers]
        return [
            (
                chains[i],
                {
                    SNAPSHOT_REF_LABEL: chains[i],
                    IMAGE_REF_LABEL: str(image.reference),
                    MANIFEST_DIGEST_LABEL: target.manifest.digest,
                    LAYER_DIGEST_LABEL: layer.digest,
                    IMAGE_LAYERS_LABEL: image_layers_label(digests[i:]),
                },
            )
            for i, layer in enumerate(target.layers)
        ]

    def probe_default(self, image: Image, target: Target) -> None:
        """What a stock snapshotter does with this V1 index: the layers prepared in order as a CRI pull does,
        until the snapshotter hands one back to the runtime (which then pulls the image whole). Reported as
        the platform's ``default-pull-modes`` check: it holds (the index is not at fault), with a warning when
        not every indexed layer was mounted lazily. The checks of the index itself are made by another
        snapshotter, with v1 enabled, on snapshots of its own."""
        result = target.result
        layers = self._layer_labels(image, target)
        covered = sum(1 for x in result.layers if x.covered)
        lazy, stopped = 0, "" if layers is not None else "the image config's diff_ids do not match its layers"
        for i, layer in enumerate(target.layers if layers is not None else []):
            assert layers is not None
            outcome = self._prepared(layers, i, layer.digest)
            if not isinstance(outcome, Prepared):
                stopped = self._stopped(layer.digest, outcome)
                break
            report = result.layer(layer.digest)
            lazy += 1 if outcome.mountpoint is not None and report is not None and report.covered else 0
        result.lazy_by_default = lazy == covered and not stopped
        counted = f"{lazy} of {covered} indexed layers mounted lazily"
        if result.lazy_by_default:
            detail = f"soci-snapshotter-grpc with its default pull modes loads this image lazily ({counted})"
        else:
            detail = (
                f"a stock soci-snapshotter-grpc ({V1_OFF_SINCE} and later; default pull modes: SOCI index "
                f"manifest v2 only) does not load this V1 index lazily: "
                + (f"{stopped} ({counted})" if stopped else counted)
                + f". It does with {v1_config_hint()}: the lazy-pull checks of this platform are made with "
                "that line. Or index with --soci-version V2"
            )
        result.add("consumer", "default-pull-modes", True, detail, warning=not result.lazy_by_default)
        self.reporter.info(f"    {target.platform}, default pull modes: {counted}")

    def verify(self, image: Image, target: Target, samples: Mapping[str, LayerSample]) -> None:
        result = target.result
        layers = self._layer_labels(image, target)
        if layers is None:
            result.add("consumer", "lazy-pull", False, "the image config's diff_ids do not match its layers")
            return
        mounted: list[str] = []
        for i, layer in enumerate(target.layers):
            report = result.layer(layer.digest)
            assert report is not None
            outcome = self._prepared(layers, i, layer.digest)
            if not isinstance(outcome, Prepared):
                message = outcome.message if isinstance(outcome, HandedBack) else outcome
                report.add("consumer", "lazy-pull", False, message)
                return
            mountpoint = outcome.mountpoint
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
        if self.consumer.default_modes:
            result.lazy_by_default = len(mounted) == covered
        result.add(
            "consumer",
            "lazy-pull",
            len(mounted) == covered,
            f"pulled through the SOCI snapshotter with {self.consumer.modes} (via {self.via}): {len(mounted)} "
            f"of {covered} indexed layers mounted lazily ({FUSE_TYPE}), {len(target.layers) - covered} other "
            "layers unpacked by the snapshotter",
        )
        for layer in target.layers:
            report = result.layer(layer.digest)
            assert report is not None
            sample = samples.get(layer.digest)
            if report.mountpoint is not None and sample is not None:
                self._read_files(report, sample)

    def _stopped(self, layer: str, outcome: HandedBack | str) -> str:
        """Why the pull stopped at ``layer``, for the default-pull-modes check."""
        if isinstance(outcome, str):
            return f"layer {short_digest(layer)}: {outcome}"
        said = ' (its log: "soci v1 is disabled")' if self._log_says("soci v1 is disabled") else ""
        return (
            f"it handed layer {short_digest(layer)} back to the container runtime{said}, which pulls and unpacks "
            "the whole image"
        )

    def _prepared(
        self, layers: list[tuple[str, dict[str, str]]], i: int, layer: str
    ) -> Prepared | HandedBack | str:
        """Layer ``i`` prepared; one that a platform pulled before in this session shares is as it was then."""
        chain, labels = layers[i]
        if chain in self.done:
            return Prepared(self.done[chain])
        outcome = self._prepare(chain, layers[i - 1][0] if i else "", labels, layer)
        if isinstance(outcome, Prepared):
            self.done[chain] = outcome.mountpoint
        return outcome

    def _prepare(
        self, chain: str, parent: str, labels: dict[str, str], layer: str
    ) -> Prepared | HandedBack | str:
        """Prepare one layer like containerd's unpacker: the new FUSE mount (if any), the layer handed back
        to the runtime, or what went wrong."""
        before = set(self.daemon.fuse_mounts())
        key = f"extract-{time.time_ns()}-{secrets.token_hex(3)} {chain}"
        try:
            mounts = self.snapshots.prepare(key, parent, labels=labels, timeout=_CALL_TIMEOUT)
        except ContainerdError as exc:
            return f"Prepare of this layer through the snapshotter failed: {exc.message}{self._why(layer)}"
        if mounts is not None:
            # The snapshotter handed the layer back to the runtime (no SOCI index it could use): we stop here.
            try:
                self.snapshots.remove(key)
            except WrapperError as exc:
                log.debug("removing snapshot %s: %s", key, exc)
            return HandedBack(
                "the snapshotter did not prepare this layer itself (it defers to the container runtime, "
                f"as it does when it finds no usable SOCI index){self._why(layer)}"
            )
        if self.snapshots.stat(chain) is None:
            return f"the snapshotter answered that layer {chain} exists, but containerd has no such snapshot"
        new = [m for m in self.daemon.fuse_mounts() if m not in before]
        return Prepared(new[0] if new else None)

    def _log_says(self, message: str) -> bool:
        """Whether the snapshotter logged ``message`` (its log is at debug level)."""
        return any(entry.get("msg") == message for entry in self.daemon.log_entries())

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
    consumer: Consumer,
    *,
    containerd_address: str,
    containerd_version: str | None,
    namespace: str,
    registry: RegistryClient,
    reporter: Reporter,
) -> Iterator[ConsumerSession]:
    """Start the consumer's daemon (containerd already names its socket) and yield a session; on the way out
    (also on an error or an interrupt) the daemon is stopped and nothing of it stays mounted.

    The session prepares snapshots through containerd's Snapshots API (the consumer's proxy plugin), as a CRI pull
    does. With a containerd that does not forward namespaces to proxy snapshotters (1.6), it sends the same
    requests to the snapshotter's own Snapshots API instead (the snapshotter still reads manifests and
    configs from that containerd). Through containerd, every call is in a lease held until the session ends:
    containerd's garbage collector (which a removed snapshot sets off) must not take a layer the snapshotter
    committed before the next layer, its child, is prepared."""
    daemon = consumer.daemon
    through_containerd = forwards_namespace(containerd_version)
    try:
        daemon.start(containerd_address)
        if through_containerd:
            client = ContainerdClient(containerd_address, namespace, timeout=_CALL_TIMEOUT)
            client.snapshots.snapshotter = consumer.name
            via = f"containerd {containerd_version or ''} (proxy snapshotter {consumer.name!r})".replace(
                "  ", " "
            )
        else:
            client = ContainerdClient(daemon.address, namespace, timeout=_CALL_TIMEOUT)
            client.snapshots.snapshotter = ""  # the snapshotter's own API serves one snapshotter: itself
            via = (
                f"the snapshotter's own Snapshots API, as containerd {containerd_version} does not pass "
                "namespaces on to proxy snapshotters"
            )
        try:
            snapshots = client.snapshots
            daemon.wait_reachable(lambda: snapshots.stat("soci-wrapper-probe", timeout=2.0), via=via)
            with client.lease() if through_containerd else contextlib.nullcontext():
                yield ConsumerSession(consumer, client.snapshots, via, registry, reporter)
        finally:
            client.close()
            reporter.info(f"    stopping soci-snapshotter-grpc ({len(daemon.fuse_mounts())} FUSE mounts)")
    finally:
        daemon.stop()


def describe_layer(report: LayerResult) -> str:
    return short_digest(report.digest)

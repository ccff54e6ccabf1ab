"""A container's root filesystem from an image's layers, as containerd's unpacker makes it for a pull.

Each layer becomes a committed snapshot named by its chain ID, on top of the one below. For every layer,
in order: Prepare ``extract-… <chainID>`` on the parent's chain ID, with the label
``containerd.io/snapshot.ref`` (and, for a remote snapshotter, the labels a CRI pull passes). A remote
snapshotter that can serve the layer itself (soci-snapshotter-grpc with an index it uses: a FUSE mount)
answers ALREADY_EXISTS: nothing to download. Otherwise the answer is a mount to unpack into: the layer's
blob is fetched into the content store, the Diff service unpacks it there, and the snapshot is committed.

The blobs come from the project's pull (wrapper.image.pull). Without a remote snapshotter every layer needs
one: the whole image is pulled in this thread while the layers are unpacked in another, each as soon as its
blob is in and the layer below committed, so unpacking overlaps the download as in containerd's own pull.
With a remote snapshotter, layer by layer: only a layer it hands back is downloaded, when it does.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.mounts import Mount
from wrapper.containerd.snapshots import SnapshotsService
from wrapper.core.errors import ContainerdError, NotFoundError, WrapperError
from wrapper.core.models import Descriptor, ResolvedImage
from wrapper.core.options import PullOptions
from wrapper.core.progress import Reporter
from wrapper.image.pull import Puller, PullResult
from wrapper.registry.client import RegistryClient

log = logging.getLogger(__name__)

SNAPSHOT_REF = "containerd.io/snapshot.ref"
# The labels a CRI pull gives a remote snapshotter with each layer (containerd's snapshotters/labels.go).
CRI_PREFIX = "containerd.io/snapshot/cri."
_LABEL_LIMIT = 4096  # containerd's limit for one label, key and value
# A remote snapshotter's Prepare fetches the index and zTOC, maybe prefetch spans, maybe a whole layer.
_PREPARE_TIMEOUT = 600.0


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Each layer's chain ID (OCI image spec): its diff ID for the first, then sha256 of "<below> <diff ID>"."""
    chains: list[str] = []
    for diff in diff_ids:
        below = chains[-1] if chains else None
        chains.append(
            diff if below is None else "sha256:" + hashlib.sha256(f"{below} {diff}".encode()).hexdigest()
        )
    return chains


def cri_labels(reference: str, manifest: str, layers: Sequence[Descriptor], index: int) -> dict[str, str]:
    """What a CRI pull tells a remote snapshotter about layer ``index``: the image, its manifest, the layer,
    and the digests of this and the following layers (as many as fit in one label)."""
    following = ""
    key = CRI_PREFIX + "image-layers"
    for layer in layers[index:]:
        item = layer.digest if not following else "," + layer.digest
        if len(key) + len(following) + len(item) > _LABEL_LIMIT:
            break
        following += item
    return {
        CRI_PREFIX + "image-ref": reference,
        CRI_PREFIX + "manifest-digest": manifest,
        CRI_PREFIX + "layer-digest": layers[index].digest,
        key: following,
    }


@dataclass
class LayerOutcome:
    """How one layer got into the root filesystem: ``lazy`` (the snapshotter mounted it with FUSE: fetched as
    read), ``remote`` (the snapshotter made it itself, from the whole layer), ``unpacked`` (downloaded and
    unpacked here), ``present`` (already there)."""

    digest: str
    size: int
    how: str = ""
    seconds: float = 0.0


@dataclass
class Rootfs:
    """The container's active snapshot (``key``) and its mounts, with how each layer got there."""

    key: str
    mounts: list[Mount]
    layers: list[LayerOutcome] = field(default_factory=list)


class _Unpacker(threading.Thread):
    """Unpacks layers ``start..`` in order, each once its blob is stored (``stored``) and the one below is
    committed; stops at ``stop`` or at the first error (kept in ``error``)."""

    def __init__(self, builder: RootfsBuilder, start: int) -> None:
        super().__init__(name="startup-unpack", daemon=True)
        self.builder = builder
        self.start_at = start
        self.stored: set[str] = set()
        self.cond = threading.Condition()
        self.stop = False
        self.error: BaseException | None = None

    def blob_stored(self, digest: str) -> None:
        with self.cond:
            self.stored.add(digest)
            self.cond.notify_all()

    def halt(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()

    def _wait_for(self, digest: str) -> bool:
        with self.cond:
            while digest not in self.stored and not self.stop:
                self.cond.wait()
            return not self.stop

    def run(self) -> None:
        try:
            for index in range(self.start_at, len(self.builder.layers)):
                if not self.builder.prepare_layer(index, unpack=self._wait_for):
                    return
        except BaseException as exc:  # handed to the thread that waits for us
            self.error = exc


class RootfsBuilder:
    """Builds the root filesystem of one image on one snapshotter (see the module docstring)."""

    def __init__(
        self,
        client: ContainerdClient,
        snapshots: SnapshotsService,
        image: ResolvedImage,
        diff_ids: Sequence[str],
        *,
        snapshotter: str,
        remote: bool,
        registry: RegistryClient,
        remote_reference: str | None = None,
        fuse_mounts: Callable[[], int] = lambda: 0,
        reporter: Reporter,
        max_concurrent_downloads: int = 4,
    ) -> None:
        target = image.selected[0]
        if len(diff_ids) != len(target.layers):
            raise WrapperError(
                f"the image config lists {len(diff_ids)} layers (rootfs.diff_ids), its manifest "
                f"{len(target.layers)}: the image is malformed"
            )
        self.client = client
        self.snapshots = snapshots
        self.snapshotter = snapshotter
        self.image = image
        self.manifest = target.manifest.digest
        self.layers = list(target.layers)
        self.chains = chain_ids(diff_ids)
        self.remote = remote
        # The image as the remote snapshotter is told to fetch it (through the counting proxy).
        self.remote_reference = remote_reference or str(image.reference)
        self.fuse_mounts = fuse_mounts  # how many FUSE mounts the snapshotter has: a new one is a lazy layer
        self.registry = registry
        self.reporter = reporter
        self.max_concurrent_downloads = max_concurrent_downloads
        self.outcomes = [LayerOutcome(layer.digest, layer.size) for layer in self.layers]
        self._keys: list[str] = []  # active snapshots made here and not committed (removed on failure)
        self._made: list[str] = []  # every snapshot this build made, in order (remove() takes them away)
        self._lock = threading.Lock()

    def _labels(self, index: int) -> dict[str, str]:
        labels = {SNAPSHOT_REF: self.chains[index]}
        if self.remote:
            labels |= cri_labels(self.remote_reference, self.manifest, self.layers, index)
        return labels

    def prepare_layer(self, index: int, *, unpack: Callable[[str], bool] | None) -> bool:
        """Layer ``index``: True when it is in (served remotely, present, or unpacked with ``unpack``, which
        waits for its blob); False when it needs unpacking and ``unpack`` is None or gave up."""
        started = time.monotonic()
        chain, layer = self.chains[index], self.layers[index]
        outcome = self.outcomes[index]
        if self.snapshots.stat(chain, snapshotter=self.snapshotter) is not None:
            outcome.how = "present"
            return True
        key = f"extract-{time.time_ns()}-{secrets.token_hex(3)} {chain}"
        mounted_before = self.fuse_mounts() if self.remote else 0
        mounts = self.snapshots.prepare(
            key,
            self.chains[index - 1] if index else "",
            labels=self._labels(index),
            snapshotter=self.snapshotter,
            timeout=_PREPARE_TIMEOUT,
        )
        if mounts is None:  # the snapshotter made the layer itself
            self._note(chain)
            outcome.how = "lazy" if self.fuse_mounts() > mounted_before else "remote"
            outcome.seconds = time.monotonic() - started
            return True
        self._keys.append(key)
        if unpack is None or not unpack(layer.digest):
            self._forget(key)
            return False
        self.client.diff.apply(layer, [Mount.of(m) for m in mounts])
        self.snapshots.commit(chain, key, snapshotter=self.snapshotter)
        self._keys.remove(key)
        self._note(chain)
        outcome.how, outcome.seconds = "unpacked", time.monotonic() - started
        self.reporter.info(f"    layer {index + 1}/{len(self.layers)} unpacked ({layer.size} bytes)")
        return True

    def _note(self, name: str) -> None:
        with self._lock:
            self._made.append(name)

    def _forget(self, key: str) -> None:
        """Remove an active snapshot that will not be committed."""
        self._keys.remove(key)
        self._remove(key)

    def _remove(self, key: str) -> bool:
        try:
            self.snapshots.remove(key, snapshotter=self.snapshotter)
        except NotFoundError:
            return True
        except WrapperError as exc:
            log.debug("removing snapshot %s: %s", key, exc)
            return False
        return True

    def remove(self) -> int:
        """Remove every snapshot this build made, the container's first; how many could not be."""
        for key in list(self._keys):
            self._forget(key)
        with self._lock:
            made, self._made = list(reversed(self._made)), []
        return sum(1 for name in made if not self._remove(name))

    def build(self, container_key: str) -> Rootfs:
        """Every layer, then the container's own active snapshot on top."""
        if self.remote:
            # As a CRI pull does: the manifest and config into containerd's content store first (a remote
            # snapshotter reads them there to unpack a layer it has no zTOC for); then only the layers the
            # snapshotter hands back are downloaded, each when it does.
            self._fetch(frozenset(layer.digest for layer in self.layers))
            for index in range(len(self.layers)):
                self.prepare_layer(index, unpack=self._fetch_one)
        elif self.layers:
            self._pull_and_unpack(0)
        top = self.chains[-1] if self.chains else ""
        mounts = self.snapshots.prepare(
            container_key, top, snapshotter=self.snapshotter, timeout=_PREPARE_TIMEOUT
        )
        if mounts is None:
            raise ContainerdError(f"the snapshotter refused to make the container's snapshot {container_key}")
        self._note(container_key)
        return Rootfs(container_key, [Mount.of(m) for m in mounts], self.outcomes)

    def _fetch_one(self, digest: str) -> bool:
        """Download one layer's blob into the content store (the pull of the image, that layer only)."""
        self._fetch(frozenset(layer.digest for layer in self.layers if layer.digest != digest))
        return True

    def _fetch(self, skip: frozenset[str]) -> None:
        """The image's pull into the content store (manifests, config), without the layers in ``skip``."""
        Puller(self.registry, self.client, PullOptions(full=True, skip_layers=skip), self.reporter).run(
            self.image
        )

    def _pull_and_unpack(self, start: int) -> PullResult:
        """Download the layers from ``start`` on (here) while they are unpacked in order (in a thread)."""
        unpacker = _Unpacker(self, start)
        options = PullOptions(
            full=True,
            max_concurrent_downloads=self.max_concurrent_downloads,
            skip_layers=frozenset(layer.digest for layer in self.layers[:start]),
        )
        puller = Puller(self.registry, self.client, options, self.reporter, on_stored=unpacker.blob_stored)
        unpacker.start()
        try:
            result = puller.run(self.image)
        except BaseException:
            unpacker.halt()
            unpacker.join()
            self._forget_keys()
            raise
        unpacker.join()
        if unpacker.error is not None:
            self._forget_keys()
            raise unpacker.error
        return result

    def _forget_keys(self) -> None:
        for key in list(self._keys):
            self._forget(key)


def read_image_file(mounts: Sequence[Mount], name: str, reach: Callable[[str], Path]) -> str | None:
    """The text of file ``name`` (``/etc/passwd``) in the root filesystem ``mounts`` describe, read from its
    layers' directories without mounting anything (top layer first; an overlay whiteout hides the file);
    None when it is in no layer. ``reach`` turns a path of the sandbox into one the host can open."""
    directories: list[str] = []
    for mount in mounts:
        if mount.type == "bind":
            directories.append(mount.source)
        elif mount.type == "overlay":
            upper = mount.option("upperdir")
            directories += [upper] if upper else []
            directories += (mount.option("lowerdir") or "").split(":")
    for directory in filter(None, directories):
        path = reach(directory) / name.lstrip("/")
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return None  # deleted by this layer
        if stat.S_ISREG(info.st_mode):
            return path.read_text(errors="replace")
        return None
    return None

"""The stage as one readable sequence:

    preflight -> authenticate -> resolve -> check -> containerd -> pull -> index -> push -> report

Preflight checks what the run will need (soci, containerd) before any network or daemon work.

``run_index`` is the product (the seed's command and ``soci-wrapper index``); ``run_pull`` is its first half on
its own (``soci-wrapper pull``). Everything they start they stop, and everything they create on disk they
remove, unless asked to keep the work directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import (
    MISSING_MESSAGE,
    AttachedContainerd,
    ManagedContainerd,
    containerd_binary_version,
    find_containerd,
)
from wrapper.errors import (
    AuthError,
    ContainerdError,
    MissingDependencyError,
    NothingToIndexError,
    SociError,
    UsageError,
)
from wrapper.existing import find_existing_indexes, soci_artifact
from wrapper.models import (
    SOCI_INDEX_V2,
    Descriptor,
    Platform,
)
from wrapper.progress import QuietReporter, Reporter, human_size, short_digest
from wrapper.pull import (
    DEFAULT_MIN_LAYER_SIZE,
    PlatformImage,
    Puller,
    PullOptions,
    PullResult,
    ResolvedImage,
    resolve_image,
)
from wrapper.push import ImagePusher
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.registry.reference import Reference
from wrapper.report import (
    IndexReport,
    LayerEvents,
    PlatformSkipped,
    describe_index,
)
from wrapper.reuse import (
    DEFAULT_SPAN_SIZE,
    Reusable,
    ReuseOptions,
    find_reusable,
    remember,
    stage_for_soci,
    ztocs_of_index,
)
from wrapper.soci import PushAuth, Soci, SociEvent, check_soci, unindexable_reason

log = logging.getLogger("wrapper.pipeline")

SociVersion = Literal["V1", "V2"]


# -- requests ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryOptions:
    """How to reach and authenticate to registries."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    docker_config: Path | None = None
    ca_file: str | None = None
    plain_http: bool = False
    endpoint_overrides: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DaemonOptions:
    """Where containerd comes from, and where this run keeps its files."""

    containerd_address: str | None = None  # attach to this socket instead of starting our own
    containerd_bin: str = "containerd"
    namespace: str = "soci-wrapper"
    work_dir: Path | None = None  # a run directory is made inside it
    keep_work_dir: bool = False


@dataclass(frozen=True)
class IndexRequest:
    reference: Reference
    soci_version: SociVersion = "V1"
    output_tag: str | None = None
    pull: PullOptions = field(default_factory=PullOptions)
    span_size: int | None = None
    force: bool = False
    soci_bin: str | None = None
    soci_timeout: float = 3600.0
    debug: bool = False
    reuse: ReuseOptions = field(default_factory=ReuseOptions)

    def __post_init__(self) -> None:
        if self.soci_version == "V2" and not self.output_tag:
            raise UsageError(
                "--soci-version V2 needs --output-tag", hint="name the tag for the SOCI-enabled image"
            )
        if self.span_size is not None and self.span_size <= 0:
            raise UsageError("--span-size must be a positive number of bytes")


class Stages:
    """Times each stage and tells the reporter when one starts."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = "", *, announce: bool = True) -> Iterator[None]:
        if announce:
            self.reporter.stage(name, detail)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)


# -- building blocks ---------------------------------------------------------------------------------------
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
    )


@contextlib.contextmanager
def run_directory(options: DaemonOptions) -> Iterator[Path]:
    """A fresh directory for this run (inside --work-dir if given); removed afterwards unless kept."""
    parent = options.work_dir
    if parent is not None:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create work directory {parent}: {exc.strerror}") from exc
    path = Path(tempfile.mkdtemp(prefix="soci-wrapper-", dir=parent))
    try:
        yield path
    finally:
        if options.keep_work_dir:
            log.info("kept work directory %s", path)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def containerd_session(options: DaemonOptions, run_dir: Path) -> Iterator[ContainerdClient]:
    """Start our own containerd (or attach to one) and yield a client in our namespace."""
    daemon: ManagedContainerd | AttachedContainerd
    if options.containerd_address:
        daemon = AttachedContainerd(options.containerd_address)
    else:
        daemon = ManagedContainerd(run_dir / "containerd", binary=options.containerd_bin, keep_work_dir=True)
    with daemon, ContainerdClient(daemon.address, options.namespace) as client:
        client.namespaces.ensure(options.namespace)
        yield client


# -- pull --------------------------------------------------------------------------------------------------
def run_pull(
    ref: Reference,
    options: PullOptions,
    registry_options: RegistryOptions,
    daemon_options: DaemonOptions,
    reporter: Reporter | None = None,
) -> PullResult:
    """``soci-wrapper pull``: the image into containerd's content store (into an attached containerd, or into
    a managed one whose work directory is kept only with --keep-work-dir)."""
    reporter = reporter or QuietReporter()
    check_containerd(daemon_options)
    with open_registry(ref, registry_options) as registry:
        reporter.stage("resolve", str(ref))
        image = resolve_image(registry, ref, options)
        with run_directory(daemon_options) as run_dir, containerd_session(daemon_options, run_dir) as client:
            return Puller(registry, client, options, reporter).run(image)


# -- index -------------------------------------------------------------------------------------------------
def run_index(
    request: IndexRequest,
    registry_options: RegistryOptions,
    daemon_options: DaemonOptions,
    reporter: Reporter | None = None,
) -> IndexReport:
    reporter = reporter or QuietReporter()
    stages = Stages(reporter)
    ref = request.reference

    soci_bin = check_soci(request.soci_bin)  # fail fast: nothing below is worth doing without them
    check_containerd(daemon_options)

    with open_registry(ref, registry_options) as registry:
        with stages("authenticate", ref.registry):
            registry.credentials.get(ref.registry)  # an ECR token is fetched here: fail early and clearly
        with stages("resolve", str(ref)):
            top = registry.get_manifest(ref)
            if (kind := soci_artifact(top)) is not None:  # e.g. the push event of this tool's own output
                return _not_an_image(request, top.descriptor.digest, kind, stages)
            image = resolve_image(registry, ref, request.pull)
        report = IndexReport(
            image=str(request.reference),
            digest=image.digest,
            soci_version=request.soci_version,
            status="indexed",
            platforms=[str(p.platform) for p in image.selected],
            stages=stages.seconds,
        )
        # Platforms whose layers are all under --min-layer-size get no index: known from the manifest alone.
        image = _only_indexable(image, request.pull.min_layer_size, report, reporter)
        if not request.force:
            with stages("check", "looking for an existing SOCI index"):
                existing = find_existing_indexes(registry, image, request.soci_version, request.output_tag)
            if existing is not None:
                report.status = "already-indexed"
                report.indexes = existing
                if request.soci_version == "V2":
                    report.pushed_tag = request.output_tag
                return report

        # The containerd session (and the run directory) last until the end of this block.
        push_auth = _push_auth(registry, ref) if request.soci_version == "V1" else None
        with run_directory(daemon_options) as run_dir, contextlib.ExitStack() as daemon:
            if daemon_options.keep_work_dir:
                report.work_dir = str(run_dir)
            with stages("containerd"):
                client = daemon.enter_context(containerd_session(daemon_options, run_dir))
            reusable: dict[str, Reusable] = {}
            if push_auth is not None and request.reuse.enabled:
                with stages("reuse", "looking for zTOCs made before"):
                    large = {
                        layer.digest: layer
                        for sel in image.selected
                        for layer in sel.layers
                        if unindexable_reason(layer.media_type, layer.size, request.pull.min_layer_size)
                        is None
                    }
                    span = request.span_size or DEFAULT_SPAN_SIZE
                    reusable = find_reusable(registry, large, span, request.reuse, run_dir / "reuse")
                if reusable:
                    reporter.info(
                        f"    {len(reusable)} of {len(large)} zTOCs found; their layers are not pulled"
                    )
            # Layers whose zTOCs are reused, and layers soci cannot index (zstd), are not pulled: soci never
            # reads them.
            unreadable = {
                layer.digest
                for sel in image.selected
                for layer in sel.layers
                if "zstd" in (unindexable_reason(layer.media_type, layer.size, 0) or "")
            }
            pull_options = dataclasses.replace(request.pull, skip_layers=frozenset(reusable) | unreadable)
            with stages("pull", announce=False):  # the puller announces itself, with what it fetches
                pulled = Puller(registry, client, pull_options, reporter).run(image)
            report.pull = pulled.summary()
            soci = Soci(
                binary=soci_bin,
                address=client.address,
                namespace=client.namespace,
                root=run_dir / "soci-root",
                tmp_dir=run_dir / "tmp",
                timeout=request.soci_timeout,
                debug=request.debug,
                # v1: soci's own store keeps every platform's index (containerd's GC keeps only the last).
                content_store="soci" if push_auth is not None else "containerd",
            )
            if push_auth is not None:
                _index_v1(request, pulled, soci, push_auth, report, stages, reusable)
            else:
                _index_v2(request, pulled, soci, client, registry, report, stages, reporter)
    return report


def _not_an_image(request: IndexRequest, digest: str, kind: str, stages: Stages) -> IndexReport:
    stages.reporter.info(f"{request.reference} is {kind}, not an image to index: nothing to do")
    return IndexReport(
        image=str(request.reference),
        digest=digest,
        soci_version=request.soci_version,
        status="not-an-image",
        platforms=[],
        stages=stages.seconds,
        reason=f"it is {kind}",
    )


def _push_auth(registry: RegistryClient, ref: Reference) -> PushAuth:
    creds = registry.credentials.get(ref.registry)
    if creds is not None and creds.is_identity_token:
        raise AuthError(
            f"soci push cannot log in to {ref.registry} with a docker identity token",
            hint="use --username with --password-stdin, or a docker login with a password",
        )
    return PushAuth(
        host=ref.registry,
        username=creds.username if creds else None,
        password=creds.password if creds else None,
        plain_http=registry.scheme(ref.registry) == "http",
        ca_file=registry.ca_file,
    )


def _only_indexable(
    image: ResolvedImage, min_layer_size: int, report: IndexReport, reporter: Reporter
) -> ResolvedImage:
    """``image`` narrowed to the platforms with a layer soci would index (see soci.unindexable_reason); the
    others are reported. NothingToIndexError, with each layer's reason, when no platform is left."""
    keep: list[PlatformImage] = []
    reasons: dict[str, str] = {}
    for sel in image.selected:
        why = {x.digest: unindexable_reason(x.media_type, x.size, min_layer_size) for x in sel.layers}
        if any(reason is None for reason in why.values()):
            keep.append(sel)
            continue
        reasons.update({digest: reason for digest, reason in why.items() if reason})
        zstd = any("zstd" in reason for reason in why.values() if reason)
        reason = "every layer is under --min-layer-size" + (" or compressed with zstd" if zstd else "")
        report.not_indexed.append(PlatformSkipped(str(sel.platform), sel.manifest.digest, reason))
        if len(image.selected) > 1:
            reporter.warn(f"{sel.platform}: {reason}; no SOCI index")
    if not keep:
        sizes = {x.digest: x.size for sel in image.selected for x in sel.layers}
        for digest, reason in reasons.items():
            reporter.info(
                f"    skipped for layer {short_digest(digest)} ({human_size(sizes[digest])}): {reason}"
            )
        chosen = ", ".join(str(sel.platform) for sel in image.selected)
        whose = "the image" if len(image.all_platforms) <= 1 else f"the selected platforms ({chosen})"
        zstd = any("zstd" in reason for reason in reasons.values())
        raise NothingToIndexError(
            f"nothing to index: every layer of {whose} is smaller than the minimum layer size of "
            f"{min_layer_size} bytes" + (" or compressed with zstd" if zstd else ""),
            hint="lower --min-layer-size to index smaller layers"
            + ("; soci v0.15.0 indexes gzip and uncompressed layers, not zstd" if zstd else ""),
        )
    return dataclasses.replace(image, selected=keep)


def _index_v1(
    request: IndexRequest,
    pulled: PullResult,
    soci: Soci,
    push_auth: PushAuth,
    report: IndexReport,
    stages: Stages,
    reusable: dict[str, Reusable],
) -> None:
    # zTOCs found elsewhere go into soci's store with an index that carries them; rebuild-db records them.
    for image in pulled.selected:
        stage_for_soci(
            soci.root, image.manifest, [reusable[x.digest] for x in image.layers if x.digest in reusable]
        )
    if reusable:
        soci.rebuild_db()
    sources = {digest: item.source for digest, item in reusable.items()}
    # One `soci create` per platform: soci stops at the first platform with nothing to index (a layer format
    # it cannot read, say), which should not keep the other platforms from getting their index.
    reporter = stages.reporter
    indexed: list[Platform] = []
    nothing: NothingToIndexError | None = None
    with stages("index", "soci create (SOCI index manifest v1)"):
        for image in pulled.selected:
            key = f"create {image.platform}"
            events = LayerEvents(reporter, key, image)
            reporter.steps_started(key, f"soci create {image.platform}", total=len(image.layers))
            try:
                soci.create(
                    pulled.image_name,
                    platforms=[image.platform],
                    span_size=request.span_size,
                    min_layer_size=request.pull.min_layer_size,
                    force=request.force,
                    on_event=events,
                )
            except NothingToIndexError as exc:
                reporter.steps_finished(key, "no zTOC")
                nothing = nothing or exc
                reason = "soci made no zTOC (no layer it can index)"
                report.not_indexed.append(PlatformSkipped(str(image.platform), image.manifest.digest, reason))
                reporter.warn(f"{image.platform}: {reason}; no SOCI index")
                continue
            reporter.steps_finished(key, events.summary())
            digests = soci.index_digests(pulled.image_name, image.platform)
            if not digests:
                raise SociError(f"soci create succeeded but recorded no index for {image.platform}")
            report.indexes.append(
                describe_index(soci.read_blob(digests[0]), digests[0], image, events, sources)
            )
            indexed.append(image.platform)
    if not indexed:
        assert nothing is not None
        raise nothing
    with stages("push", f"soci push to {pulled.reference.registry}"):
        key = "push"
        reporter.steps_started(key, "soci push")

        def on_push(event: SociEvent) -> None:
            if event.kind == "retry":
                reporter.warn(f"soci push: {event.detail}")
            elif event.kind in ("uploaded", "exists"):
                verb = "pushed" if event.kind == "uploaded" else "already there"
                reporter.step(key, f"{verb} {short_digest(event.digest)}")

        outcome = soci.push(pulled.image_name, push_auth, platforms=indexed, on_event=on_push)
        reporter.steps_finished(key, f"{outcome.attempts} attempt{'s' if outcome.attempts > 1 else ''}")
    report.push = {"tool": "soci push", "attempts": outcome.attempts, "seconds": outcome.seconds}
    blobs = soci.root / "content" / "blobs" / "sha256"
    remember(
        request.reuse,
        [
            (ztoc, blobs / ztoc.digest.removeprefix("sha256:"))
            for idx in report.indexes
            for ztoc in ztocs_of_index(json.loads(soci.read_blob(idx.soci_index_digest)))
        ],
    )


def _index_v2(
    request: IndexRequest,
    pulled: PullResult,
    soci: Soci,
    client: ContainerdClient,
    registry: RegistryClient,
    report: IndexReport,
    stages: Stages,
    reporter: Reporter,
) -> None:
    assert request.output_tag
    ref = pulled.reference
    dest = Reference(ref.registry, ref.repository, tag=request.output_tag)
    with stages("index", "soci convert (SOCI index manifest v2)"):
        key = "convert"
        by_layer = {layer.digest: image for image in pulled.selected for layer in image.layers}
        events = {str(image.platform): LayerEvents(reporter, key, image) for image in pulled.selected}

        def on_event(event: SociEvent) -> None:
            image = by_layer.get(event.digest)
            if image is not None:
                events[str(image.platform)](event)

        reporter.steps_started(key, "soci convert", total=len(by_layer))
        soci.convert(
            pulled.image_name,
            str(dest),
            platforms=[p.platform for p in pulled.selected],
            span_size=request.span_size,
            min_layer_size=request.pull.min_layer_size,
            on_event=on_event,
        )
        reporter.steps_finished(key, "; ".join(f"{p}: {e.summary()}" for p, e in events.items()))
        converted = client.images.get(str(dest)).target
        entries = [Descriptor.from_oci(m) for m in json.loads(_read(client, converted)).get("manifests", [])]
        for image in pulled.selected:
            soci_entry = next(
                (
                    e
                    for e in entries
                    if e.artifact_type == SOCI_INDEX_V2 and e.platform and image.platform.matches(e.platform)
                ),
                None,
            )
            if soci_entry is None:  # soci convert leaves out platforms with nothing it can index
                reason = "soci made no zTOC (no layer it can index)"
                report.not_indexed.append(PlatformSkipped(str(image.platform), image.manifest.digest, reason))
                reporter.warn(f"{image.platform}: {reason}; no SOCI index")
                continue
            body = _read(client, soci_entry)
            report.indexes.append(describe_index(body, soci_entry.digest, image, events[str(image.platform)]))
    with stages("push", f"{dest}"):
        pushed = ImagePusher(client, registry, reporter=reporter).push(str(dest), dest)
    report.pushed_tag = request.output_tag
    report.output_digest = pushed.digest
    report.push = {
        "tool": "soci-wrapper",
        "blobs_uploaded": len(pushed.blobs_uploaded),
        "blobs_skipped": len(pushed.blobs_skipped),
        "bytes_uploaded": pushed.bytes_uploaded,
    }


def _read(client: ContainerdClient, desc: Descriptor) -> bytes:
    return b"".join(client.content.read(desc.digest))


# Re-exported for the CLI.
__all__ = [
    "DEFAULT_MIN_LAYER_SIZE",
    "DaemonOptions",
    "IndexReport",
    "IndexRequest",
    "PullOptions",
    "RegistryOptions",
    "run_index",
    "run_pull",
]

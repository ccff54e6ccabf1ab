"""The stage as one readable sequence:

    resolve -> authenticate -> check -> containerd -> pull -> index -> push -> report

``run_index`` is the product (the seed's command and ``soci-wrapper index``); ``run_pull`` is its first half on
its own (``soci-wrapper pull``). Everything they start they stop, and everything they create on disk they
remove, unless asked to keep the work directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import AttachedContainerd, ManagedContainerd
from wrapper.errors import (
    AuthError,
    MissingDependencyError,
    NotFoundError,
    NothingToIndexError,
    SociError,
    UsageError,
)
from wrapper.models import (
    SOCI_INDEX_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    SOCI_LAYER_DIGEST_ANNOTATION,
    Descriptor,
    Platform,
)
from wrapper.progress import QuietReporter, Reporter
from wrapper.pull import DEFAULT_MIN_LAYER_SIZE, Puller, PullOptions, PullResult, ResolvedImage, resolve_image
from wrapper.push import ImagePusher
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.registry.reference import Reference
from wrapper.soci import PushAuth, Soci, find_soci

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

    def __post_init__(self) -> None:
        if self.soci_version == "V2" and not self.output_tag:
            raise UsageError(
                "--soci-version V2 needs --output-tag", hint="name the tag for the SOCI-enabled image"
            )
        if self.span_size is not None and self.span_size <= 0:
            raise UsageError("--span-size must be a positive number of bytes")


# -- reports -----------------------------------------------------------------------------------------------
@dataclass
class LayerInfo:
    digest: str
    size: int


@dataclass
class PlatformIndex:
    platform: str
    manifest_digest: str
    soci_index_digest: str
    ztocs: int = 0
    layers_indexed: list[LayerInfo] = field(default_factory=list)
    layers_skipped: list[LayerInfo] = field(default_factory=list)


@dataclass
class IndexReport:
    image: str
    digest: str
    soci_version: str
    status: Literal["indexed", "already-indexed"]
    platforms: list[str]
    indexes: list[PlatformIndex] = field(default_factory=list)
    pushed_tag: str | None = None
    output_digest: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    pull: dict[str, Any] | None = None
    work_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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

    with open_registry(ref, registry_options) as registry:
        with stages("authenticate", ref.registry):
            registry.credentials.get(ref.registry)  # an ECR token is fetched here: fail early and clearly
        with stages("resolve", str(ref)):
            image = resolve_image(registry, ref, request.pull)
        report = IndexReport(
            image=str(request.reference),
            digest=image.digest,
            soci_version=request.soci_version,
            status="indexed",
            platforms=[str(p.platform) for p in image.selected],
            stages=stages.seconds,
        )
        if not request.force:
            with stages("check", "looking for an existing SOCI index"):
                existing = find_existing_indexes(registry, image, request)
            if existing is not None:
                report.status = "already-indexed"
                report.indexes = existing
                if request.soci_version == "V2":
                    report.pushed_tag = request.output_tag
                return report

        soci_bin = find_soci(request.soci_bin)
        if soci_bin is None:
            raise MissingDependencyError(
                "soci not found", hint="run scripts/bootstrap.sh, set SOCI_BIN or pass --soci-bin"
            )

        # The containerd session (and the run directory) last until the end of this block.
        push_auth = _push_auth(registry, ref) if request.soci_version == "V1" else None
        with run_directory(daemon_options) as run_dir, contextlib.ExitStack() as daemon:
            if daemon_options.keep_work_dir:
                report.work_dir = str(run_dir)
            with stages("containerd"):
                client = daemon.enter_context(containerd_session(daemon_options, run_dir))
            with stages("pull", announce=False):  # the puller announces itself, with what it fetches
                pulled = Puller(registry, client, request.pull, reporter).run(image)
            report.pull = pulled.summary()
            soci = Soci(
                binary=soci_bin,
                address=client.address,
                namespace=client.namespace,
                root=run_dir / "soci-root",
                tmp_dir=run_dir / "tmp",
                timeout=request.soci_timeout,
                debug=request.debug,
            )
            if push_auth is not None:
                _index_v1(request, pulled, soci, client, push_auth, report, stages)
            else:
                _index_v2(request, pulled, soci, client, registry, report, stages, reporter)
    return report


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


def _index_v1(
    request: IndexRequest,
    pulled: PullResult,
    soci: Soci,
    client: ContainerdClient,
    push_auth: PushAuth,
    report: IndexReport,
    stages: Stages,
) -> None:
    # One `soci create` per platform: soci stops at the first platform with nothing to index, and a
    # platform whose layers are all small should not keep the others from getting their index.
    indexed: list[Platform] = []
    nothing: NothingToIndexError | None = None
    with stages("index", "soci create (SOCI index manifest v1)"):
        for image in pulled.selected:
            try:
                soci.create(
                    pulled.image_name,
                    platforms=[image.platform],
                    span_size=request.span_size,
                    min_layer_size=request.pull.min_layer_size,
                    force=request.force,
                )
            except NothingToIndexError as exc:
                nothing = nothing or exc
                stages.reporter.warn(
                    f"{image.platform}: every layer is under --min-layer-size; no SOCI index"
                )
                continue
            digests = soci.index_digests(pulled.image_name, image.platform)
            if not digests:
                raise SociError(f"soci create succeeded but recorded no index for {image.platform}")
            report.indexes.append(_describe_index(client, digests[0], image, request.pull.min_layer_size))
            indexed.append(image.platform)
    if not indexed:
        assert nothing is not None
        raise nothing
    with stages("push", f"soci push to {pulled.reference.registry}"):
        soci.push(pulled.image_name, push_auth, platforms=indexed)


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
        soci.convert(
            pulled.image_name,
            str(dest),
            platforms=[p.platform for p in pulled.selected],
            span_size=request.span_size,
            min_layer_size=request.pull.min_layer_size,
        )
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
            if soci_entry is None:  # soci convert leaves out platforms with nothing to index
                reporter.warn(f"{image.platform}: every layer is under --min-layer-size; no SOCI index")
                continue
            report.indexes.append(
                _describe_index(client, soci_entry.digest, image, request.pull.min_layer_size)
            )
    with stages("push", f"{dest}"):
        pushed = ImagePusher(client, registry, reporter=reporter).push(str(dest), dest)
    report.pushed_tag = request.output_tag
    report.output_digest = pushed.digest


def _read(client: ContainerdClient, desc: Descriptor) -> bytes:
    return b"".join(client.content.read(desc.digest))


def _describe_index(client: ContainerdClient, digest: str, image: Any, min_layer_size: int) -> PlatformIndex:
    """What a SOCI index (in containerd's content store) covers of ``image`` (a pull.PlatformImage)."""
    doc = json.loads(b"".join(client.content.read(digest)))
    covered = {
        layer.get("annotations", {}).get(SOCI_LAYER_DIGEST_ANNOTATION) for layer in doc.get("layers", [])
    }
    out = PlatformIndex(str(image.platform), image.manifest.digest, digest, ztocs=len(doc.get("layers", [])))
    for layer in image.layers:
        target = out.layers_indexed if layer.digest in covered else out.layers_skipped
        target.append(LayerInfo(layer.digest, layer.size))
    return out


# -- idempotency -------------------------------------------------------------------------------------------
def find_existing_indexes(
    registry: RegistryClient, image: ResolvedImage, request: IndexRequest
) -> list[PlatformIndex] | None:
    """The SOCI indexes the registry already holds for every selected platform, or None if any is missing.

    V1: an index manifest whose subject is the platform's manifest (referrers API, or the ``sha256-<hex>``
    tag on registries without it). V2: ``--output-tag`` names an image index holding, for each platform, a
    manifest with the same config and layers annotated with a SOCI index that the image index also holds.
    """
    ref = image.reference
    found: list[PlatformIndex] = []
    if request.soci_version == "V1":
        for sel in image.selected:
            referrers = registry.get_referrers(ref, sel.manifest.digest, artifact_type=SOCI_INDEX_V1)
            if not referrers:
                return None
            found.append(PlatformIndex(str(sel.platform), sel.manifest.digest, referrers[-1].digest))
        return found

    assert request.output_tag
    try:
        output = registry.get_manifest(ref, request.output_tag)
    except NotFoundError:
        return None
    if not output.descriptor.is_index:
        return None
    entries = [Descriptor.from_oci(m) for m in json.loads(output.body).get("manifests", [])]
    soci_indexes = {e.digest for e in entries if e.artifact_type == SOCI_INDEX_V2}
    for sel in image.selected:
        match = None
        for entry in entries:
            index_digest = entry.annotations.get(SOCI_INDEX_DIGEST_ANNOTATION)
            if not entry.is_manifest or not entry.platform or not sel.platform.matches(entry.platform):
                continue
            if index_digest not in soci_indexes:
                continue
            doc = registry.get_manifest(ref, entry.digest).json()
            same_layers = [x["digest"] for x in doc.get("layers", [])] == [x.digest for x in sel.layers]
            if doc.get("config", {}).get("digest") == sel.config.digest and same_layers:
                match = PlatformIndex(str(sel.platform), entry.digest, str(index_digest))
                break
        if match is None:
            return None
        found.append(match)
    return found


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

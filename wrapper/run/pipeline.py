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
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from wrapper.containerd.client import ContainerdClient
from wrapper.core.errors import (
    AuthError,
    NothingToIndexError,
    UsageError,
)
from wrapper.core.models import PlatformImage, ResolvedImage
from wrapper.core.options import (
    DEFAULT_MIN_LAYER_SIZE,
    DaemonOptions,
    IndexRequest,
    PullOptions,
    RegistryOptions,
)
from wrapper.core.progress import QuietReporter, Reporter, human_size, short_digest
from wrapper.core.reference import Reference
from wrapper.core.report import IndexReport, PlatformIndex, PlatformSkipped, Stages
from wrapper.image.pull import Puller, PullResult
from wrapper.image.resolve import resolve_image
from wrapper.registry.client import RegistryClient
from wrapper.run.recording import PrefetchRecorder, capped_request, record_prefetch, recording_platform
from wrapper.run.session import (
    Session,
    check_containerd,
    containerd_session,
    open_registry,
    run_directory,
    soci_in,
)
from wrapper.soci.binary import check_soci
from wrapper.soci.existing import find_existing_indexes, prefetch_of_indexes, soci_artifact
from wrapper.soci.indexing import Indexing
from wrapper.soci.prebuild import Prebuilder, fast_pull_rate
from wrapper.soci.pullmodes import V1_NOTE
from wrapper.soci.reuse import DEFAULT_SPAN_SIZE, Reusable, find_reusable
from wrapper.soci.runner import PushAuth, Soci, unindexable_reason

log = logging.getLogger("wrapper.run.pipeline")

SociVersion = Literal["V1", "V2"]


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
    recorder: PrefetchRecorder | None = None,
) -> IndexReport:
    """``soci-wrapper index`` of one image; with ``recorder`` (--record-prefetch), a start of it recorded first
    for its prefetch list (wrapper.run.recording)."""
    reporter = reporter or QuietReporter()
    soci_bin = check_soci(request.soci_bin)  # fail fast: nothing below is worth doing without them
    check_containerd(daemon_options)
    if recorder is not None:
        recorder.preflight()
    stages = Stages(reporter)
    with Session(daemon_options, stages) as session:
        report = index_image(request, registry_options, session, soci_bin, stages, recorder)
    report.warnings += v1_note([report], reporter)
    return report


def v1_note(reports: Iterable[IndexReport], reporter: Reporter) -> list[str]:
    """A run that made or found a SOCI index manifest v1: the note that a stock soci-snapshotter-grpc does not
    load it lazily, shown once (a progress line: not with --quiet) and returned for the report's warnings."""
    if not any(r.soci_version == "V1" and r.status != "not-an-image" for r in reports):
        return []
    reporter.info(f"note: {V1_NOTE}")
    return [V1_NOTE]


def index_image(
    request: IndexRequest,
    registry_options: RegistryOptions,
    session: Session,
    soci_bin: str,
    stages: Stages,
    recorder: PrefetchRecorder | None = None,
) -> IndexReport:
    """resolve -> check -> (containerd) -> reuse -> pull -> index -> push for one image, in ``session``."""
    reporter = stages.reporter
    ref = request.reference
    with open_registry(ref, registry_options) as registry:
        with stages("authenticate", ref.registry):
            registry.credentials.get(ref.registry)  # an ECR token is fetched here: fail early and clearly
        with stages("resolve", str(ref)):
            top = registry.get_manifest(ref)
            if (kind := soci_artifact(top)) is not None:  # e.g. the push event of this tool's own output
                return _not_an_image(request, top.descriptor.digest, kind, stages)
            image = resolve_image(registry, ref, request.pull)
        report = _indexing_report(request, str(request.reference), image, stages)
        # Platforms whose layers are all under --min-layer-size get no index: known from the manifest alone.
        image = _only_indexable(image, request.pull.min_layer_size, report, reporter)
        if recorder is not None:  # the list is needed from here on: the existing index is checked against it
            request = record_prefetch(recorder, request, registry, image, report, session, stages)
        else:  # the given list under --prefetch-max-files (a recording caps its merged list)
            request = capped_request(request, report, reporter)
        existing: list[PlatformIndex] | None = None
        existing_prefetch: dict[str, dict[str, str]] = {}
        if not request.force:
            with stages("check", "looking for an existing SOCI index"):
                existing = find_existing_indexes(registry, image, request.soci_version, request.output_tag)
                if existing is not None and request.prefetch_files:
                    existing_prefetch = prefetch_of_indexes(registry, ref, existing)
            if existing is not None and not request.prefetch_files:
                report.status = "already-indexed"
                report.indexes = existing
                if request.soci_version == "V2":
                    report.pushed_tag = request.output_tag
                return report
            if existing is not None:
                # With a prefetch list, the index is made again (from the existing index's zTOCs) and pushed
                # only if its prefetch artifacts differ from the registry's (wrapper.soci.existing).
                reporter.info(
                    "    the image has a SOCI index: checking its prefetch artifacts against the list"
                )
                request = _reusing_existing(request, ref)

        push_auth = _push_auth(registry, ref) if request.soci_version == "V1" else None
        # containerd and this image's directory, from here on (started on first need)
        client = session.client()
        run_dir = session.image_dir()
        if session.options.keep_work_dir:
            report.work_dir = str(session.run_dir)
        reusable: dict[str, Reusable] = {}
        if request.reuse.enabled:
            with stages("reuse", "looking for zTOCs made before"):
                reusable = _find_reusable(registry, image, request, run_dir, reporter)
        # Layers whose zTOCs are reused, and layers soci cannot index (zstd), are not pulled: soci never
        # reads them.
        unreadable = {
            layer.digest
            for sel in image.selected
            for layer in sel.layers
            if "zstd" in (unindexable_reason(layer.media_type, layer.size, 0) or "")
        }
        # --overlap auto: no early builds over this pull rate, and so no reason for the largest layer to wait.
        auto_rate = fast_pull_rate() if request.overlap == "auto" else None
        pull_options = dataclasses.replace(
            request.pull,
            skip_layers=frozenset(reusable) | unreadable,
            largest_layer_first=request.overlap != "never",
            largest_alone_below=auto_rate,
        )
        soci = _soci(soci_bin, client, run_dir, request)
        with (
            _removed_after(session, run_dir),
            _prebuilder(request, session, soci, image, pull_options, auto_rate) as early,
        ):
            # Each large layer is indexed as soon as it is in containerd, while the others download.
            on_stored, on_bytes = (early.stored, early.downloaded) if early is not None else (None, None)
            with stages("pull", announce=False):  # the puller announces itself, with what it fetches
                pulled = Puller(registry, client, pull_options, reporter, on_stored, on_bytes).run(image)
            report.pull = pulled.summary()
            indexing = Indexing(
                request,
                pulled,
                soci,
                report,
                stages,
                reusable,
                early,
                existing=existing,
                existing_prefetch=existing_prefetch,
            )
            _index_and_push(indexing, push_auth, client, registry, image.index_body)
    return report


def _reusing_existing(request: IndexRequest, ref: Reference) -> IndexRequest:
    """``request`` taking zTOCs from the image's existing index too (V1: its referrers; V2: the SOCI-enabled
    image at --output-tag), so that making it again for the comparison pulls no large layer."""
    if not request.reuse.enabled:
        return request
    own = (
        ref
        if request.soci_version == "V1"
        else Reference(ref.registry, ref.repository, tag=request.output_tag)
    )
    reuse = dataclasses.replace(request.reuse, reuse_from=(own, *request.reuse.reuse_from))
    return dataclasses.replace(request, reuse=reuse)


def _soci(binary: str, client: ContainerdClient, run_dir: Path, request: IndexRequest) -> Soci:
    return soci_in(run_dir, binary, client, timeout=request.soci_timeout, debug=request.debug)


def _prebuilder(
    request: IndexRequest,
    session: Session,
    soci: Soci,
    image: ResolvedImage,
    pull: PullOptions,
    max_pull_rate: float | None,
) -> contextlib.AbstractContextManager[Prebuilder | None]:
    """What indexes layers while the pull goes on (wrapper.soci.prebuild), unless --overlap never."""
    if request.overlap == "never":
        return contextlib.nullcontext()
    return Prebuilder(
        soci=soci,
        client=session.client(),
        work=soci.root.parent / "prebuild",
        image=image,
        skip=pull.skip_layers,
        span_size=request.span_size,
        min_layer_size=pull.min_layer_size,
        max_pull_rate=max_pull_rate,
    )


@contextlib.contextmanager
def _removed_after(session: Session, run_dir: Path) -> Iterator[None]:
    """The image's directory is removed when its work is done: the next image of the run needs the room."""
    try:
        yield
    finally:
        if not session.options.keep_work_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def _index_and_push(
    indexing: Indexing,
    push_auth: PushAuth | None,
    client: ContainerdClient,
    registry: RegistryClient,
    index_body: bytes | None,
) -> None:
    """soci makes the index (V1 or V2) and it is pushed; the zTOCs go to the cache."""
    if push_auth is not None:
        indexing.v1(push_auth)
    else:
        indexing.v2(client, registry, index_body)
    indexing.remember()


# -- index an OCI layout ----------------------------------------------------------------------------------
def run_index_from_oci(
    request: IndexRequest,
    layout_path: Path,
    registry_options: RegistryOptions,
    daemon_options: DaemonOptions,
    reporter: Reporter | None = None,
    recorder: PrefetchRecorder | None = None,
) -> IndexReport:
    """``soci-wrapper index --from-oci PATH IMAGE_REF``: the image of an OCI layout (directory or tar) into
    containerd, pushed to IMAGE_REF (blobs the registry has are skipped, the tag last), then (``recorder``: a
    start of it recorded for its prefetch list) indexed and its index pushed as ``index_image`` does."""
    from wrapper.image.ocilayout import Importer, OciLayout
    from wrapper.image.push import ImagePusher

    reporter = reporter or QuietReporter()
    ref = request.reference
    if not ref.tag:
        raise UsageError(
            "--from-oci needs IMAGE_REF with a tag to push the image to", hint="e.g. repo/app:1.2"
        )
    soci_bin = check_soci(request.soci_bin)
    check_containerd(daemon_options)
    if recorder is not None:
        recorder.preflight()
    stages = Stages(reporter)
    with OciLayout(layout_path) as layout:
        with stages("resolve", str(layout_path)):
            image = layout.resolve(ref, request.pull)
        if ref.digest and ref.digest != image.digest:
            raise UsageError(
                f"{layout_path}: its image is {image.digest}, not {ref.digest} as IMAGE_REF says"
            )
        with Session(daemon_options, stages) as session, open_registry(ref, registry_options) as registry:
            with stages("authenticate", ref.registry):
                registry.credentials.get(ref.registry)
            report = _indexing_report(request, str(ref), image, stages)
            indexable = _only_indexable(image, request.pull.min_layer_size, report, reporter)
            if recorder is not None:
                recording_platform(indexable)  # one this machine can start: before anything is pushed
            else:
                request = capped_request(request, report, reporter)
            push_auth = _push_auth(registry, ref) if request.soci_version == "V1" else None
            client = session.client()
            run_dir = session.image_dir()
            if session.options.keep_work_dir:
                report.work_dir = str(session.run_dir)
            with stages("import", announce=False):
                imported = Importer(layout, client, reporter).run(image)
            report.pull = imported.summary()
            with stages("push-image", f"{ref}"):
                ImagePusher(client, registry, reporter=reporter).push(imported.image_name, ref)
            if recorder is not None:  # the image is in the registry now: the recording pulls it from there
                request = record_prefetch(recorder, request, registry, indexable, report, session, stages)
            pulled = dataclasses.replace(imported, selected=indexable.selected)
            indexing = Indexing(
                request, pulled, _soci(soci_bin, client, run_dir, request), report, stages, {}
            )
            with _removed_after(session, run_dir):
                _index_and_push(indexing, push_auth, client, registry, image.index_body)
    report.warnings += v1_note([report], reporter)
    return report


def _find_reusable(
    registry: RegistryClient, image: ResolvedImage, request: IndexRequest, run_dir: Path, reporter: Reporter
) -> dict[str, Reusable]:
    """zTOCs made before for the layers soci would index (see wrapper.soci.reuse)."""
    min_size = request.pull.min_layer_size
    wanted = {
        layer.digest: layer
        for sel in image.selected
        for layer in sel.layers
        if unindexable_reason(layer.media_type, layer.size, min_size) is None
    }
    span = request.span_size or DEFAULT_SPAN_SIZE
    found = find_reusable(registry, image.reference, wanted, span, request.reuse, run_dir / "reuse")
    if found:
        reporter.info(f"    {len(found)} of {len(wanted)} zTOCs found; their layers are not pulled")
    return found


def _indexing_report(request: IndexRequest, name: str, image: ResolvedImage, stages: Stages) -> IndexReport:
    """The report of an image about to be indexed, filled in as the stages go."""
    return IndexReport(
        image=name,
        digest=image.digest,
        soci_version=request.soci_version,
        status="indexed",
        platforms=[str(p.platform) for p in image.selected],
        stages=stages.seconds,
        prefetch_files=len(request.prefetch_files),
    )


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
        reason = f"every layer is under --min-layer-size ({human_size(min_layer_size)})" + (
            " or compressed with zstd" if zstd else ""
        )
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


# Re-exported for the CLI.
__all__ = [
    "DEFAULT_MIN_LAYER_SIZE",
    "DaemonOptions",
    "IndexReport",
    "IndexRequest",
    "PullOptions",
    "RegistryOptions",
    "run_index",
    "run_index_from_oci",
    "run_pull",
]

"""``soci-wrapper startup IMAGE [-- CMD ARGS...]``: start a container of the image and time it.

    per variant: sandbox -> containerd (+ soci-snapshotter-grpc) -> pull (resolve, layers) -> container -> ready

The ``lazy`` variant pulls through soci-snapshotter-grpc as containerd's ``soci`` proxy snapshotter, with its
default pull modes and prefetch on; ``--baseline`` adds the ``full`` variant: every layer downloaded and
unpacked into overlayfs, as a pull without SOCI does. Each variant gets a fresh sandbox (sandbox.py), its own
containerd (and snapshotter) and a loopback proxy in front of the registry that counts the bytes fetched
(meter.py). The container runs as container.py says; ``--record FILE`` watches what it opens until ready
(recorder.py), in the first variant.

The caller gives the registry client and the run directory (the command line makes them as ``index`` does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.containerd.client import ContainerdClient
from wrapper.core.models import Platform, ResolvedImage
from wrapper.core.options import PullOptions
from wrapper.core.progress import QuietReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.image.resolve import read_config, resolve_image
from wrapper.registry.client import RegistryClient
from wrapper.startup.container import ContainerRun, Readiness
from wrapper.startup.daemon import (
    SNAPSHOTTER_PLUGIN,
    Daemons,
    check_can_run,
    leased_client,
    sandboxed_containerd,
)
from wrapper.startup.lazy import start_lazy
from wrapper.startup.meter import MeteredMirror
from wrapper.startup.recorder import FanotifyRecorder, write_prefetch_list
from wrapper.startup.report import FULL, LAZY, StartupReport, VariantReport, not_lazy_warning, verdict
from wrapper.startup.rootfs import Rootfs, RootfsBuilder, read_image_file
from wrapper.startup.sandbox import Sandbox
from wrapper.startup.spec import (
    ImageConfig,
    Limits,
    RunSettings,
    User,
    build_spec,
    process_args,
    resolve_user,
)

log = logging.getLogger("wrapper.startup")

OVERLAYFS = "overlayfs"
COUNTED_BY = (
    "a loopback proxy of the run's own in front of the registry: every response body (manifests, config, SOCI "
    "index, zTOCs, layers or their spans), whoever asked (soci-wrapper or the snapshotter)"
)


@dataclass(frozen=True)
class StartupRequest:
    reference: Reference
    command: tuple[str, ...] | None = None  # replaces the image's Cmd
    env: tuple[str, ...] = ()
    readiness: Readiness = field(default_factory=Readiness)
    record: Path | None = None
    baseline: bool = False
    lazy: bool = True
    platform: Platform | None = None
    limits: Limits = field(default_factory=Limits)
    containerd_bin: str = "containerd"
    snapshotter_bin: str | None = None
    namespace: str = "soci-wrapper"
    max_concurrent_downloads: int = 4

    @property
    def settings(self) -> RunSettings:
        return RunSettings(self.command, self.env, self.limits)


def run_startup(
    request: StartupRequest, registry: RegistryClient, run_dir: Path, reporter: Reporter | None = None
) -> StartupReport:
    """Start the image's container (each variant in turn) and report the times; StartupError when it does not
    become ready, with nothing left running or mounted either way."""
    reporter = reporter or QuietReporter()
    check_can_run(request.containerd_bin, what="startup", root_hint="run as root (containers need it here)")
    ref = request.reference
    platforms = (request.platform,) if request.platform else ()
    with _stage(reporter, "resolve", str(ref)):
        image = resolve_image(registry, ref, PullOptions(platforms=platforms))
        config = ImageConfig.from_document(_config_document(registry, image))
    target = image.selected[0]
    report = StartupReport(
        image=str(ref),
        digest=image.digest,
        platform=str(target.platform),
        args=_args(config, request),
        readiness=request.readiness.describe(),
    )
    kinds = ([LAZY] if request.lazy else []) + ([FULL] if request.baseline or not request.lazy else [])
    for number, kind in enumerate(kinds):
        record = request.record is not None and number == 0
        variant, recorded = _run_variant(kind, request, registry, run_dir / kind, reporter, record=record)
        report.variants.append(variant)
        if record:
            report.recorded = recorded or []
            report.record_file = str(request.record)
            assert request.record is not None
            write_prefetch_list(request.record, report.recorded)
    lazy, full = report.variant(LAZY), report.variant(FULL)
    if lazy is not None and (warning := not_lazy_warning(lazy)) is not None:
        report.warnings.append(warning)
    if lazy is not None and full is not None:
        report.verdict, report.lazy_loses = verdict(lazy, full)
    return report


def _args(config: ImageConfig, request: StartupRequest) -> list[str]:
    return process_args(config, request.command)  # UsageError when there is nothing to run


def _config_document(registry: RegistryClient, image: ResolvedImage) -> dict[str, Any]:
    target = image.selected[0]
    body = image.fetched.get(target.config.digest) or read_config(registry, image.reference, target.config)
    document = json.loads(body)
    return document if isinstance(document, dict) else {}


def _diff_ids(document: dict[str, Any]) -> list[str]:
    rootfs = document.get("rootfs")
    values = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return [str(d) for d in values] if isinstance(values, list) else []


@contextlib.contextmanager
def _stage(reporter: Reporter, name: str, detail: str = "") -> Iterator[None]:
    reporter.stage(name, detail)
    yield


def _run_variant(
    kind: str,
    request: StartupRequest,
    registry: RegistryClient,
    work: Path,
    reporter: Reporter,
    *,
    record: bool,
) -> tuple[VariantReport, list[str] | None]:
    ref = request.reference
    with contextlib.ExitStack() as stack:
        setup_started = time.monotonic()
        with _stage(
            reporter, f"{kind}: setup", "containerd" + (" and soci-snapshotter-grpc" if kind == LAZY else "")
        ):
            daemons = _start_daemons(kind, request, registry, work, stack)
        client = stack.enter_context(ContainerdClient(daemons.containerd.address, request.namespace))
        pull_client = stack.enter_context(ContainerdClient(daemons.containerd.address, request.namespace))
        report = VariantReport(kind, SNAPSHOTTER_PLUGIN if kind == LAZY else OVERLAYFS, via=daemons.via)
        report.setup_seconds = time.monotonic() - setup_started
        report.bytes_counted_by = COUNTED_BY
        metered = _metered(registry, ref, daemons.mirror)
        stack.callback(metered.close)
        container_id = f"startup-{secrets.token_hex(4)}"

        started = time.monotonic()
        with _stage(reporter, f"{kind}: pull", str(ref)):
            image = resolve_image(
                metered, ref, PullOptions(platforms=(request.platform,) if request.platform else ())
            )
            document = _config_document(metered, image)
            builder = RootfsBuilder(
                pull_client,
                daemons.snapshots,
                image,
                _diff_ids(document),
                snapshotter=daemons.snapshotter,
                remote=kind == LAZY,
                registry=metered,
                remote_reference=str(_at(ref, daemons.mirror.address)),
                fuse_mounts=daemons.fuse_mounts,
                reporter=reporter,
                max_concurrent_downloads=request.max_concurrent_downloads,
            )
            stack.callback(_remove_rootfs, builder)
            rootfs = builder.build(f"{container_id}-rootfs")
        report.pull_seconds = time.monotonic() - started
        report.layers = rootfs.layers

        config = ImageConfig.from_document(document)
        user = _user(config, rootfs, daemons.sandbox)
        spec = build_spec(config, request.settings, user, cgroups_path=f"/{request.namespace}/{container_id}")
        run = ContainerRun(
            client,
            daemons.sandbox,
            container_id=container_id,
            spec=spec,
            rootfs=rootfs.mounts,
            snapshotter=daemons.known_as,
            snapshot_key=rootfs.key if daemons.known_as else "",
            image=str(ref),
            state_dir=daemons.containerd.work_dir / "state",
            work_dir=work,
            readiness=request.readiness,
            recorder=FanotifyRecorder() if record else None,
        )
        with _stage(reporter, f"{kind}: run", request.readiness.describe()), run:
            launched = time.monotonic()
            outcome = run.run()
        report.ready_seconds = outcome.ready
        report.total_seconds = launched - started + outcome.ready
        report.exit_status = outcome.exit_status
        report.fuse_mounts = daemons.fuse_mounts()
        report.prefetch = daemons.prefetch_loaded()
        report.bytes_fetched, report.registry_requests = daemons.mirror.meter.snapshot()
        reporter.info(
            f"    {kind}: pull {report.pull_seconds:.2f} s, ready {report.ready_seconds:.2f} s, total "
            f"{report.total_seconds:.2f} s, {report.bytes_fetched} bytes fetched"
        )
        return report, outcome.recorded
    raise AssertionError("unreachable")  # pragma: no cover - the with block returns or raises


def _metered(registry: RegistryClient, ref: Reference, mirror: MeteredMirror) -> RegistryClient:
    """A registry client that reaches the registry through the counting proxy (same credentials)."""
    return RegistryClient(
        registry.credentials, plain_http=True, endpoint_overrides={ref.registry: mirror.address}
    )


def _user(config: ImageConfig, rootfs: Rootfs, sandbox: Sandbox) -> User:
    """The image's user in numbers (root when it names none; its /etc/passwd and /etc/group otherwise)."""
    if not config.user:
        return User()
    passwd = read_image_file(rootfs.mounts, "/etc/passwd", sandbox.path)
    group = read_image_file(rootfs.mounts, "/etc/group", sandbox.path)
    return resolve_user(config.user, passwd, group)


def _start_daemons(
    kind: str, request: StartupRequest, registry: RegistryClient, work: Path, stack: contextlib.ExitStack
) -> Daemons:
    sandbox = stack.enter_context(Sandbox(work / "sandbox"))
    mirror = stack.enter_context(
        MeteredMirror(registry.base_url(request.reference.registry), ca_file=registry.ca_file)
    )
    if kind == LAZY:
        return start_lazy(
            request.reference,
            registry,
            sandbox,
            mirror,
            work,
            stack,
            containerd_bin=request.containerd_bin,
            snapshotter_bin=request.snapshotter_bin,
            namespace=request.namespace,
        )
    containerd = sandboxed_containerd(sandbox, work / "containerd", binary=request.containerd_bin)
    stack.enter_context(containerd)
    client = leased_client(containerd, request.namespace, stack)
    via = f"containerd {containerd.binary_version}"
    return Daemons(sandbox, containerd, mirror, client.snapshots, OVERLAYFS, OVERLAYFS, via)


def _remove_rootfs(builder: RootfsBuilder) -> None:
    left = builder.remove()
    if left:
        log.warning("%d snapshots could not be removed (they go with the run's containerd)", left)


def _at(ref: Reference, host: str) -> Reference:
    """``ref`` with another registry host (the counting proxy in front of its own)."""
    return Reference(host, ref.repository, tag=ref.tag, digest=ref.digest)

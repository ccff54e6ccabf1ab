"""``soci-wrapper verify``: prove that an image's SOCI index serves lazy loading, level by level.

    resolve -> registry checks -> [containerd -> pull -> content checks -> [snapshotter -> lazy pull]]

The levels (``--level``; by default the deepest this machine supports): ``registry`` needs nothing but the
registry; ``content`` needs soci and a containerd; ``consumer`` also needs soci-snapshotter-grpc, FUSE, root
and soci-wrapper's own containerd. A level that cannot run is reported as not run, with the reason. A level
only looks at what passed the levels before it. Everything started is stopped (and unmounted) on the way out,
also on failure and on SIGINT/SIGTERM.

The consumer level runs the snapshotter with its default pull modes, as a stock one has them; a V1 index is
then verified by a second snapshotter with v1 enabled, after the first showed what a stock one does with it
(wrapper.verify.consumer).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import AttachedContainerd, ManagedContainerd
from wrapper.core.errors import ContainerdError, MissingDependencyError
from wrapper.core.models import Platform
from wrapper.core.options import DaemonOptions, RegistryOptions
from wrapper.core.progress import QuietReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.core.report import Stages
from wrapper.registry.client import RegistryClient
from wrapper.run.session import check_containerd, open_registry, run_directory, soci_in
from wrapper.soci.binary import check_soci
from wrapper.soci.pullmodes import DEFAULT_PULL_MODES
from wrapper.soci.snapshotter import RegistryAccess, SnapshotterConfig, SnapshotterDaemon
from wrapper.verify.consumer import Consumer, consumer_session, consumer_unavailable
from wrapper.verify.content_checks import (
    DEFAULT_FILES_PER_LAYER,
    LayerSample,
    hand_to_soci,
    pull_for_content,
    run_content_level,
)
from wrapper.verify.registry_checks import Image, resolve, run_registry_level
from wrapper.verify.report import LEVELS, Level, VerifyReport

log = logging.getLogger("wrapper.verify")

SociVersionChoice = Literal["V1", "V2", "auto"]
V1_PLUGIN = "soci-v1"  # the proxy plugin name of the snapshotter with v1 enabled


@dataclass(frozen=True)
class VerifyRequest:
    reference: Reference
    platforms: tuple[Platform, ...] = ()
    all_platforms: bool = False
    soci_version: SociVersionChoice = "auto"
    level: Level | None = None  # None: the deepest this machine supports
    soci_bin: str | None = None
    snapshotter_bin: str | None = None
    soci_timeout: float = 600.0
    files_per_layer: int = DEFAULT_FILES_PER_LAYER
    debug: bool = False


@dataclass
class _Plan:
    """Which levels run; ``levels`` says why the others do not."""

    levels: dict[str, str]
    soci_bin: str | None = None
    snapshotter_bin: str | None = None

    def runs(self, level: Level) -> bool:
        return self.levels.get(level) == "run"


def plan_levels(request: VerifyRequest, daemon_options: DaemonOptions) -> _Plan:
    """The levels to run. An explicitly asked ``content`` (or ``consumer``) level whose soci or containerd is
    missing is an error (exit 9 / 6), as for ``index``; the consumer level's own needs (the snapshotter,
    FUSE, root, our own containerd) are reported as not met instead."""
    wanted = LEVELS if request.level is None else LEVELS[: LEVELS.index(request.level) + 1]
    plan = _Plan({"registry": "run"})
    for level in LEVELS[1:]:
        if level not in wanted:
            plan.levels[level] = f"not run: not asked (--level {request.level})"
    if "content" not in wanted:
        return plan
    try:
        plan.soci_bin = check_soci(request.soci_bin)
        check_containerd(daemon_options)
    except (MissingDependencyError, ContainerdError) as exc:
        if request.level is not None:
            raise
        plan.levels["content"] = plan.levels["consumer"] = f"not run: {exc}"
        return plan
    plan.levels["content"] = "run"
    if "consumer" in wanted:
        binary, why = consumer_unavailable(request.snapshotter_bin, bool(daemon_options.containerd_address))
        plan.snapshotter_bin = binary
        plan.levels["consumer"] = "run" if binary else f"not run: {why}"
    return plan


def run_verify(
    request: VerifyRequest,
    registry_options: RegistryOptions,
    daemon_options: DaemonOptions,
    reporter: Reporter | None = None,
) -> VerifyReport:
    reporter = reporter or QuietReporter()
    stages = Stages(reporter)
    plan = plan_levels(request, daemon_options)
    ref = request.reference
    with open_registry(ref, registry_options) as registry:
        with stages("resolve", str(ref)):
            image = resolve(registry, ref, request.platforms, request.all_platforms)
        report = VerifyReport(
            image=str(ref),
            digest=image.top.digest,
            soci_version=request.soci_version,
            levels=plan.levels,
            platforms=[t.result for t in image.targets],
            stages=stages.seconds,
        )
        with run_directory(daemon_options) as run_dir:
            with stages("registry", "discovery, index manifests, zTOC blobs"):
                run_registry_level(registry, image, request.soci_version, run_dir / "ztocs")
            if plan.runs("content"):
                if not any(t.ztocs for t in image.targets):
                    for level in ("content", "consumer"):
                        if plan.levels.get(level) == "run":
                            plan.levels[level] = "not run: no readable zTOC (see the registry level)"
                else:
                    _deeper_levels(request, plan, image, registry, daemon_options, run_dir, stages, reporter)
    return report


def _deeper_levels(
    request: VerifyRequest,
    plan: _Plan,
    image: Image,
    registry: RegistryClient,
    daemon_options: DaemonOptions,
    run_dir: Path,
    stages: Stages,
    reporter: Reporter,
) -> None:
    consumer = plan.runs("consumer")
    with contextlib.ExitStack() as stack:
        consumers: list[Consumer] = []
        daemon: ManagedContainerd | AttachedContainerd
        with stages("containerd"):
            if daemon_options.containerd_address:
                daemon = AttachedContainerd(daemon_options.containerd_address)
            elif consumer:
                assert plan.snapshotter_bin is not None
                consumers = _consumers(request, plan.snapshotter_bin, image, registry, run_dir)
                for each in consumers:
                    stack.callback(each.daemon.stop)  # also when containerd does not start
                daemon = ManagedContainerd(
                    run_dir / "containerd",
                    binary=daemon_options.containerd_bin,
                    keep_work_dir=True,
                    proxy_plugins=[each.plugin for each in consumers],
                )
            else:
                daemon = ManagedContainerd(
                    run_dir / "containerd", binary=daemon_options.containerd_bin, keep_work_dir=True
                )
            stack.enter_context(daemon)
            client = stack.enter_context(ContainerdClient(daemon.address, daemon_options.namespace))
            client.namespaces.ensure(daemon_options.namespace)
        # One lease for the whole session: nothing pulled is collected before the last check.
        stack.enter_context(client.lease())
        with stages("pull", announce=False):
            pull_for_content(registry, client, image, reporter)
        soci = soci_in(
            run_dir, plan.soci_bin or "soci", client, timeout=request.soci_timeout, debug=request.debug
        )
        with stages("content", "soci ztoc info / get-file, compared with the layers' tar streams"):
            hand_to_soci(soci, image)
            samples = run_content_level(
                registry, soci, image, reporter, files_per_layer=request.files_per_layer, work=run_dir
            )
        if consumer and consumers:
            version = daemon.binary_version if isinstance(daemon, ManagedContainerd) else None
            if not _consumer_level(version, image, samples, consumers, client, registry, stages, reporter):
                plan.levels["consumer"] = "not run: no index passed the registry and content levels"


def _consumers(
    request: VerifyRequest, binary: str, image: Image, registry: RegistryClient, run_dir: Path
) -> list[Consumer]:
    """The snapshotter with its default pull modes; and, when a V1 index was found, one with v1 enabled (v2
    too, unless --soci-version V1 asks for the v1 index of an image that might also name a v2 one)."""
    ref = image.reference
    creds = registry.credentials.get(ref.registry)
    access = RegistryAccess(
        host=ref.registry,
        plain_http=registry.scheme(ref.registry) == "http",
        username=creds.username if creds else None,
        password=creds.password if creds else None,
        ca_file=registry.ca_file,
    )
    # No background fetch: the reads through FUSE prove laziness.
    out = [Consumer(SnapshotterDaemon(binary, run_dir / "snapshotter", access, DEFAULT_PULL_MODES))]
    if any(t.result.found and t.result.soci_version == "V1" for t in image.targets):
        v1 = SnapshotterConfig(soci_v1=True, soci_v2=request.soci_version != "V1")
        out.append(Consumer(SnapshotterDaemon(binary, run_dir / "snapshotter-v1", access, v1), V1_PLUGIN))
    return out


def _consumer_level(
    containerd_version: str | None,
    image: Image,
    samples: dict[str, LayerSample],
    consumers: list[Consumer],
    client: ContainerdClient,
    registry: RegistryClient,
    stages: Stages,
    reporter: Reporter,
) -> bool:
    """The consumer level for every platform whose index passed the levels above; False if there is none.
    With the default pull modes: V2 indexes verified, V1 indexes probed (what a stock snapshotter does); then,
    with v1 enabled, V1 indexes verified."""
    eligible = []
    for target in image.targets:
        result = target.result
        if not result.found:
            continue
        if not (result.passed("content") and all(x.passed("content") for x in result.layers)):
            result.add(
                "consumer", "lazy-pull", True, "not run for this platform: its index failed the checks above"
            )
            continue
        eligible.append(target)
    if not eligible:
        return False
    v1 = [t for t in eligible if t.result.soci_version == "V1"]
    with stages("consumer", "soci-snapshotter-grpc: lazy pull through containerd, reads through FUSE"):
        for consumer in consumers:
            targets = eligible if consumer.default_modes else v1
            if not targets:
                continue
            session = consumer_session(
                consumer,
                containerd_address=client.address,
                containerd_version=containerd_version,
                namespace=client.namespace,
                registry=registry,
                reporter=reporter,
            )
            with session as s:
                for target in targets:
                    if consumer.default_modes and target in v1:
                        s.probe_default(image, target)
                        continue
                    s.verify(image, target, samples)
                    mounts = target.result.fuse_mounts
                    reporter.info(
                        f"    {target.platform} ({consumer.modes}): {mounts} of {len(target.layers)} layers "
                        "mounted lazily"
                    )
            if consumer.daemon.fuse_mounts():
                raise ContainerdError(
                    f"FUSE mounts of soci-snapshotter-grpc are left under {consumer.daemon.root}"
                )
    return True

"""The command line of ``verify`` (its arguments, its table) and ``index --verify``; wrapper.cli.main wires them in."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any, Literal, cast

from rich.console import Console
from rich.table import Table

from wrapper.core.errors import UsageError
from wrapper.core.models import Platform, validate_digest
from wrapper.core.progress import Reporter, human_size, short_digest
from wrapper.core.reference import Reference
from wrapper.verify.report import DEFAULT_FILES_PER_LAYER, LEVELS, LayerResult, PlatformResult, VerifyReport

if TYPE_CHECKING:  # the run's modules are imported when a command runs, not for --help
    from wrapper.core.options import DaemonOptions, IndexRequest, RegistryOptions
    from wrapper.core.report import IndexReport
    from wrapper.verify.run import VerifyRequest

DESCRIPTION = """\
Check that IMAGE_REF's SOCI index serves lazy loading, at three levels:
  registry  the index is found the way the SOCI snapshotter finds it (v1: referrers API or the sha256-<hex>
            tag, subject = the platform's manifest; v2: the manifest's com.amazon.soci.index-digest, listed in
            the image index); media types and annotations; each zTOC annotated with a layer of the manifest,
            its blob present, digest-checked and describing that layer (size, compression, span size)
  content   soci decodes each zTOC (soci ztoc info) and reads a sample of files through it (soci ztoc
            get-file: the first, the last and the largest of each layer), compared byte for byte with the
            layer's tar stream from the registry
  consumer  soci-snapshotter-grpc, as a private containerd's snapshotter, pulls the image lazily with the
            labels of a CRI pull: each indexed layer must be a FUSE mount, and files read through it match
By default the deepest level this machine supports runs; the report says which levels ran, and why not.
For a SOCI index v2, name the SOCI-enabled image (the --output-tag of `index --soci-version V2`)."""


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "image_ref", nargs="?", metavar="IMAGE_REF", help="the image (or SOCI-enabled image) to check"
    )
    g = p.add_argument_group("ECR image (instead of IMAGE_REF)")
    g.add_argument("--repo", help="ECR repository name")
    g.add_argument("--digest", help="image digest (sha256:...)")
    g.add_argument("--tag", help="image tag (instead of --digest)")
    g.add_argument("--region", help="AWS region of the repository")
    g.add_argument("--account", help="AWS account id (12 digits) that owns the repository")
    g = p.add_argument_group("image")
    g.add_argument(
        "--platform", action="append", type=_platform, default=None, help="os/arch[/variant]; repeatable"
    )
    g.add_argument("--all-platforms", action="store_true", help="every platform of the image")
    g = p.add_argument_group("verification")
    g.add_argument(
        "--soci-version",
        type=str.upper,
        choices=("V1", "V2", "AUTO"),
        default="AUTO",
        help="which index to check: V1, V2, or AUTO (default): whichever the snapshotter would use",
    )
    g.add_argument(
        "--level",
        choices=LEVELS,
        default=None,
        help="how deep to check (default: the deepest this machine supports)",
    )
    g.add_argument(
        "--files-per-layer",
        type=int,
        default=DEFAULT_FILES_PER_LAYER,
        help=f"files of each layer read and compared (default: {DEFAULT_FILES_PER_LAYER})",
    )
    g.add_argument("--soci-bin", help="soci binary (default: $SOCI_BIN, .deps/bin/soci, then PATH)")
    g.add_argument(
        "--snapshotter-bin",
        help="soci-snapshotter-grpc (default: $SOCI_SNAPSHOTTER_BIN, .deps/bin/soci-snapshotter-grpc, then PATH)",
    )
    g.add_argument("--soci-timeout", type=float, default=600.0, help="seconds each soci call may take")


def add_index_verify_flag(group: Any) -> None:
    group.add_argument(
        "--verify",
        action="store_true",
        help="after the push, check the index like `verify` does (its exit code when it is not valid)",
    )


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def verify_reference(args: argparse.Namespace) -> Reference:
    """IMAGE_REF, or the ECR image of --repo/--digest|--tag/--region/--account."""
    if args.image_ref and args.repo:
        raise UsageError("give either IMAGE_REF or --repo, not both")
    if args.image_ref:
        if args.digest or args.tag:
            raise UsageError("--digest and --tag go with --repo; put them in IMAGE_REF instead")
        return Reference.parse(args.image_ref)
    if not args.repo:
        raise UsageError(
            "no image given", hint="pass IMAGE_REF, or --repo with --digest, --region and --account"
        )
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    account = args.account or os.environ.get("AWS_ACCOUNT_ID")
    if not region or not account:
        raise UsageError("--repo needs --region and --account")
    if not args.digest and not args.tag:
        raise UsageError("--repo needs --digest (or --tag)")
    if args.digest:
        validate_digest(args.digest)
    return Reference.ecr(account, region, args.repo, digest=args.digest, tag=args.tag)


def request_from_args(args: argparse.Namespace) -> VerifyRequest:
    from wrapper.verify.run import VerifyRequest

    if args.platform and args.all_platforms:
        raise UsageError("--platform and --all-platforms exclude each other", hint="pick one")
    if args.files_per_layer < 0:
        raise UsageError("--files-per-layer must be 0 or more")
    if args.soci_timeout <= 0:
        raise UsageError("--soci-timeout must be a positive number of seconds")
    version = cast(Literal["V1", "V2", "auto"], "auto" if args.soci_version == "AUTO" else args.soci_version)
    return VerifyRequest(
        reference=verify_reference(args),
        platforms=tuple(args.platform or ()),
        all_platforms=bool(args.all_platforms),
        soci_version=version,
        level=args.level,
        soci_bin=args.soci_bin,
        snapshotter_bin=args.snapshotter_bin,
        soci_timeout=args.soci_timeout,
        files_per_layer=args.files_per_layer,
        debug=bool(args.debug),
    )


def verify_indexed(
    request: IndexRequest,
    report: IndexReport,
    registry_options: RegistryOptions,
    daemon_options: DaemonOptions,
    reporter: Reporter,
) -> VerifyReport | None:
    """``index --verify``: check what the run indexed (V2: the SOCI-enabled image at --output-tag); None when
    there is nothing to check (a reference to soci-wrapper's own output)."""
    from wrapper.verify.run import VerifyRequest, run_verify

    if report.status == "not-an-image" or not report.indexes:
        return None
    ref = request.reference
    if request.soci_version == "V2":
        assert request.output_tag
        ref = Reference(ref.registry, ref.repository, tag=request.output_tag)
    reporter.stage("verify", f"{ref}")
    return run_verify(
        VerifyRequest(
            reference=ref,
            platforms=tuple(Platform.parse(i.platform) for i in report.indexes),
            soci_version=request.soci_version,
            soci_bin=request.soci_bin,
            debug=request.debug,
        ),
        registry_options,
        daemon_options,
        reporter,
    )


# -- output --------------------------------------------------------------------------------------------------
def _mark(layer: LayerResult, level: str) -> str:
    checks = [c for c in layer.checks if c.level == level]
    if not checks:
        return "-"
    return "ok" if all(c.ok for c in checks) else "FAILED"


def print_verify(out: Console, report: VerifyReport) -> None:
    """The verification as tables: the verdict, then per platform a row per layer and level."""
    summary = Table(title="SOCI index verification", show_header=False, box=None)
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    summary.add_row("image", report.image)
    summary.add_row("digest", report.digest)
    summary.add_row("status", report.status)
    for level, state in report.levels.items():
        summary.add_row(f"{level} level", state)
    summary.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()))
    out.print(summary)
    for platform in report.platforms:
        out.print(_platform_table(platform), highlight=False)
    problems = report.problems()
    if problems:
        out.print("problems:", style="bold")
        for line in problems:
            out.print(f"  - {line}", highlight=False, markup=False)
    out.print(report.summary(), highlight=False, markup=False)


def _platform_table(platform: PlatformResult) -> Table:
    if platform.found:
        title = (
            f"{platform.platform}: SOCI index {platform.soci_version} {platform.index_digest} "
            f"(found through the {platform.discovered_via})"
        )
        if platform.fuse_mounts is not None:
            title += f"; {platform.fuse_mounts} FUSE mounts"
    else:
        title = f"{platform.platform}: no SOCI index (manifest {platform.manifest_digest})"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for name in ("layer", "size", "zTOC", "registry", "content", "consumer", "notes"):
        table.add_column(name, overflow="fold")
    for layer in platform.layers:
        notes = []
        if platform.found and not layer.covered:
            notes.append(layer.covered_reason or "no zTOC")
        if layer.files_compared:
            notes.append(f"{layer.files_compared} files compared")
        if layer.lazy:
            notes.append(f"lazy, {layer.files_read_lazily} files read via FUSE")
        failed = [c.name for c in layer.checks if not c.ok]
        if failed:
            notes.append("failed: " + ", ".join(dict.fromkeys(failed)))
        table.add_row(
            short_digest(layer.digest),
            human_size(layer.size),
            short_digest(layer.ztoc) if layer.ztoc else "-",
            _mark(layer, "registry"),
            _mark(layer, "content"),
            _mark(layer, "consumer"),
            "; ".join(notes),
        )
    return table

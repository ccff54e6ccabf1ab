"""Command line: arguments, output (rich or JSON) and exit codes. The work happens in wrapper.pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import ssl
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from wrapper import __version__
from wrapper.errors import ExitCode, UsageError, WrapperError
from wrapper.models import Platform, validate_digest
from wrapper.progress import human_size, make_reporter
from wrapper.pull import DEFAULT_MIN_LAYER_SIZE, PullOptions
from wrapper.verify.console import DESCRIPTION as VERIFY_DESCRIPTION
from wrapper.verify.console import (
    add_index_verify_flag,
    add_verify_arguments,
    print_verify,
    verify_indexed,
)
from wrapper.verify.console import request_from_args as verify_request_from_args

PROG = "soci-wrapper"
COMMANDS = ("index", "pull", "doctor", "verify")

EXIT_CODES_HELP = """\
exit codes:
  0    success (or the image was already indexed); with several platforms, at least one was indexed
       and the others are listed as not indexed (e.g. every layer under --min-layer-size)
  1    unexpected internal error (rerun with --debug for the traceback)
  2    bad usage or input (invalid reference, digest, option)
  3    authentication failed (registry or AWS)
  4    not found (repository, tag, digest, platform)
  5    registry unavailable or answered with an error
  6    containerd could not be started or reached
  7    soci failed
  8    nothing to index: every layer is smaller than --min-layer-size
  9    a required program (containerd, soci) is missing
  10   verify: a checked platform has no SOCI index
  11   verify: a SOCI index exists but is invalid (the report names the platform, layer and check)
  12   several images: at least one failed (each image's code and error are in the report)
  130  interrupted
"""

ENV_HELP = """\
environment (flags win over these):
  SOCI_WRAPPER_IMAGE        image reference for 'index' (instead of IMAGE_REF)
  SOCI_WRAPPER_REPO         --repo          SOCI_WRAPPER_DIGEST      --digest
  SOCI_WRAPPER_TAG          --tag           SOCI_WRAPPER_ACCOUNT     --account (also AWS_ACCOUNT_ID)
  SOCI_WRAPPER_REGION       --region (also AWS_REGION, AWS_DEFAULT_REGION)
  SOCI_WRAPPER_SOCI_VERSION --soci-version  SOCI_WRAPPER_OUTPUT_TAG  --output-tag
  SOCI_WRAPPER_PLATFORMS    --platform (comma-separated), or 'all' for --all-platforms
  SOCI_BIN                  the soci binary (like --soci-bin)
  SOCI_WRAPPER_CACHE_DIR    --cache-dir (CodeBuild: list it under cache: paths: to keep it between builds)
  DOCKER_CONFIG             directory of the docker config.json used for registry credentials
  NO_COLOR                  plain output without colour
"""

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_MAX_SIZE = (1 << 63) - 1  # soci's size flags are int64
# containerd's rule for namespace names (identifiers.Validate).
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
_MAX_NAMESPACE_LENGTH = 76


def parse_size(text: str) -> int:
    """'10MiB', '10M', '4194304' -> bytes (K/M/G are binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use bytes or a number with KiB, MiB or GiB")
    unit = (m.group(2) or "b").lower()[0]
    size = int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    if size > _MAX_SIZE:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: too large (at most {_MAX_SIZE} bytes)")
    return size


def parse_seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use a positive number of seconds")
    return seconds


def parse_namespace(text: str) -> str:
    """A containerd namespace name: containerd refuses others, but only once it has been started."""
    if not _NAMESPACE_RE.match(text) or len(text) > _MAX_NAMESPACE_LENGTH:
        raise argparse.ArgumentTypeError(
            f"invalid namespace {text!r}: use letters and digits, separated by '.', '_' or '-' "
            f"(at most {_MAX_NAMESPACE_LENGTH} characters)"
        )
    return text


def parse_platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_override(text: str) -> tuple[str, str]:
    host, sep, addr = text.partition("=")
    if not sep or not host or not addr:
        raise argparse.ArgumentTypeError(f"invalid endpoint override {text!r}: use HOST=IP:PORT")
    return host, addr


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(ExitCode.USAGE)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def build_parser() -> _Parser:
    fmt = argparse.RawDescriptionHelpFormatter

    output = _Parser(add_help=False)
    g = output.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output; warnings and errors only")
    g.add_argument("--debug", action="store_true", help="verbose logs and tracebacks on errors")

    registry = _Parser(add_help=False)
    g = registry.add_argument_group("registry access")
    g.add_argument("--username", help="registry user name (the password is read with --password-stdin)")
    g.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the registry password (or token) from standard input",
    )
    g.add_argument(
        "--docker-config", type=Path, help="directory with a docker config.json (default: $DOCKER_CONFIG)"
    )
    g.add_argument("--ca-file", help="PEM file with the CA that signed the registry's certificate")
    g.add_argument(
        "--plain-http", action="store_true", help="talk plain HTTP to the registry (loopback is implied)"
    )
    g.add_argument(
        "--endpoint-override", action="append", type=parse_override, default=[], help=argparse.SUPPRESS
    )
    g.add_argument(
        "--registry-read-timeout",
        type=float,
        default=None,
        help="seconds without a byte from the registry before a request is tried again (default: 120)",
    )

    daemon = _Parser(add_help=False)
    g = daemon.add_argument_group("containerd")
    g.add_argument(
        "--containerd-address", help="attach to this containerd socket instead of starting our own"
    )
    g.add_argument(
        "--containerd-bin", default="containerd", help="containerd binary to start (default: %(default)s)"
    )
    g.add_argument(
        "--namespace",
        type=parse_namespace,
        default="soci-wrapper",
        help="containerd namespace to work in (default: %(default)s)",
    )
    g.add_argument(
        "--work-dir", type=Path, help="where this run keeps its files (default: a temporary directory)"
    )
    g.add_argument(
        "--keep-work-dir", action="store_true", help="keep the run's directory (containerd root, logs)"
    )

    pulling = _Parser(add_help=False)
    g = pulling.add_argument_group("image")
    g.add_argument(
        "--platform", action="append", type=parse_platform, default=None, help="os/arch[/variant]; repeatable"
    )
    g.add_argument("--all-platforms", action="store_true", default=None, help="every platform of the image")
    g.add_argument(
        "--min-layer-size",
        type=parse_size,
        default=DEFAULT_MIN_LAYER_SIZE,
        help="layers smaller than this get no zTOC and are not downloaded (default: 10MiB)",
    )
    g.add_argument(
        "--max-concurrent-downloads", type=int, default=4, help="blobs in flight at once (default: 4)"
    )

    parser = _Parser(
        prog=PROG,
        formatter_class=fmt,
        description=(
            "Build a SOCI index for a container image and push it to the image's registry, in one command:\n"
            "start containerd, pull the image (only what soci reads), run soci, push, report.\n\n"
            "The seed form (no subcommand) indexes an image in Amazon ECR:\n"
            f"  {PROG} --repo REPO --digest sha256:... --region REGION --account ACCOUNT "
            "[--soci-version V2 --output-tag TAG]\n"
            "which is the same as\n"
            f"  {PROG} index ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO@sha256:..."
        ),
        epilog=EXIT_CODES_HELP + "\n" + ENV_HELP,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "index",
        parents=[output, pulling, registry, daemon],
        formatter_class=fmt,
        help="build and push a SOCI index for an image (the default command)",
        description="Build and push a SOCI index for IMAGE_REF, or for the ECR image named by --repo/--digest.",
        epilog=EXIT_CODES_HELP + "\n" + ENV_HELP,
    )
    p.add_argument(
        "image_refs",
        nargs="*",
        metavar="IMAGE_REF",
        help="e.g. registry.example.com/app:1.2 or ...@sha256:...; several: one containerd for all",
    )
    g = p.add_argument_group("many images")
    g.add_argument(
        "--from-file", metavar="FILE", help="image references, one per line ('-': standard input; # comments)"
    )
    g.add_argument(
        "--max-concurrent-images",
        type=int,
        default=None,
        help="images in flight at once when there are several (default: 2)",
    )
    g = p.add_argument_group("local image")
    g.add_argument(
        "--from-oci",
        metavar="PATH",
        type=Path,
        help="index the image of this OCI layout (directory or tar) and push it, with its index, to IMAGE_REF",
    )
    g = p.add_argument_group("ECR image (instead of IMAGE_REF)")
    g.add_argument("--repo", help="ECR repository name")
    g.add_argument("--digest", help="image digest (sha256:...)")
    g.add_argument("--tag", help="image tag (instead of --digest)")
    g.add_argument("--region", help="AWS region of the repository")
    g.add_argument("--account", help="AWS account id (12 digits) that owns the repository")
    g = p.add_argument_group("SOCI")
    g.add_argument(
        "--soci-version",
        type=str.upper,
        choices=("V1", "V2"),
        default=None,
        help="V1: index manifest referring to the image (default). V2: a new SOCI-enabled image at --output-tag",
    )
    g.add_argument("--output-tag", help="tag for the SOCI-enabled image (required for V2, ignored for V1)")
    g.add_argument("--span-size", type=parse_size, help="zTOC span size (soci's default: 4MiB)")
    g.add_argument("--force", action="store_true", help="rebuild and push even when an index already exists")
    add_index_verify_flag(g)
    g.add_argument("--soci-bin", help="soci binary (default: $SOCI_BIN, .deps/bin/soci, then PATH)")
    g = p.add_argument_group("zTOC reuse (index only what is new)")
    g.add_argument(
        "--cache-dir",
        type=Path,
        help="keep zTOCs here between runs, and reuse them (default: $SOCI_WRAPPER_CACHE_DIR; none)",
    )
    g.add_argument(
        "--cache-max-size", type=parse_size, default=None, help="trim the cache to this size (default: 2GiB)"
    )
    g.add_argument(
        "--reuse-from",
        action="append",
        default=[],
        metavar="IMAGE_REF",
        help="reuse the zTOCs of this image's SOCI index (e.g. the previous build); repeatable",
    )
    g.add_argument("--no-reuse", action="store_true", help="build every zTOC from its layer")
    g.add_argument(
        "--soci-timeout", type=parse_seconds, default=3600.0, help="seconds each soci call may take"
    )

    p = sub.add_parser(
        "pull",
        parents=[output, pulling, registry, daemon],
        formatter_class=fmt,
        help="pull an image into containerd's content store (sparse by default)",
        description=(
            "Pull IMAGE_REF into containerd's content store over gRPC, without unpacking. Layers smaller than\n"
            "--min-layer-size are skipped unless --full. With a managed containerd the content is removed at\n"
            "the end unless --keep-work-dir; attach to a running containerd with --containerd-address to keep it."
        ),
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("image_ref", metavar="IMAGE_REF")
    p.add_argument("--full", action="store_true", help="download every layer, small ones too")

    p = sub.add_parser(
        "doctor",
        parents=[output],
        help="check that containerd and soci are installed and usable",
        description="Report what soci-wrapper would use and whether it works; non-zero exit if something is missing.",
    )
    p.add_argument("--containerd-address", help="check this containerd socket instead of the binary")
    p.add_argument("--containerd-bin", default="containerd")
    p.add_argument("--soci-bin")

    p = sub.add_parser(
        "verify",
        parents=[output, registry, daemon],
        formatter_class=fmt,
        help="check that an image's SOCI index serves lazy loading (registry, content, snapshotter)",
        description=VERIFY_DESCRIPTION,
        epilog=EXIT_CODES_HELP,
    )
    add_verify_arguments(p)
    return parser


def _resolve_index_reference(args: argparse.Namespace) -> Any:
    from wrapper.registry.reference import Reference

    image_ref = (args.image_refs[0] if args.image_refs else None) or _env("SOCI_WRAPPER_IMAGE")
    repo = args.repo or _env("SOCI_WRAPPER_REPO")
    digest = args.digest or _env("SOCI_WRAPPER_DIGEST")
    tag = args.tag or _env("SOCI_WRAPPER_TAG")
    if image_ref and repo:
        raise UsageError("give either IMAGE_REF or --repo, not both")
    if image_ref:
        if digest or tag:
            raise UsageError("--digest and --tag go with --repo; put them in IMAGE_REF instead")
        return Reference.parse(image_ref)
    if not repo:
        raise UsageError(
            "no image given", hint="pass IMAGE_REF, or --repo with --digest, --region and --account"
        )
    region = args.region or _env("SOCI_WRAPPER_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    account = args.account or _env("SOCI_WRAPPER_ACCOUNT", "AWS_ACCOUNT_ID")
    if not region:
        raise UsageError("--repo needs --region (or AWS_REGION)")
    if not account:
        raise UsageError("--repo needs --account (or SOCI_WRAPPER_ACCOUNT)")
    if not digest and not tag:
        raise UsageError("--repo needs --digest (or --tag)")
    if digest:
        validate_digest(digest)
    return Reference.ecr(account, region, repo, digest=digest, tag=tag)


def _pull_options(args: argparse.Namespace, *, full: bool = False) -> PullOptions:
    platforms = args.platform
    all_platforms = bool(args.all_platforms)
    if platforms is None and not all_platforms and (env := _env("SOCI_WRAPPER_PLATFORMS")):
        if env.strip().lower() == "all":
            all_platforms = True
        else:
            platforms = [Platform.parse(p) for p in env.split(",") if p.strip()]
    return PullOptions(
        platforms=tuple(platforms or ()),
        all_platforms=all_platforms,
        min_layer_size=args.min_layer_size,
        full=full,
        max_concurrent_downloads=args.max_concurrent_downloads,
    )


def _registry_options(args: argparse.Namespace, stdin: Callable[[], str]) -> Any:
    from wrapper.pipeline import RegistryOptions

    password = None
    if args.password_stdin:
        if not args.username:
            raise UsageError("--password-stdin needs --username")
        password = stdin().rstrip("\r\n")
        if not password:
            raise UsageError(
                "--password-stdin read an empty password",
                hint="pipe the password in on standard input; is the variable you pipe in empty?",
            )
    elif args.username:
        raise UsageError("--username needs --password-stdin", hint="pipe the password in; it is never a flag")
    if args.docker_config is not None and args.docker_config.exists() and not args.docker_config.is_dir():
        raise UsageError(
            f"--docker-config {args.docker_config} is not a directory",
            hint="pass the directory that holds config.json",
        )
    if args.ca_file:
        _check_ca_file(args.ca_file)
    return RegistryOptions(
        username=args.username,
        password=password,
        docker_config=args.docker_config,
        ca_file=args.ca_file,
        plain_http=args.plain_http,
        endpoint_overrides=tuple(args.endpoint_override),
        read_timeout=_read_timeout(args.registry_read_timeout),
    )


def _reuse_options(args: argparse.Namespace, reference: Any) -> Any:
    from wrapper.registry.reference import Reference
    from wrapper.reuse import DEFAULT_CACHE_MAX_BYTES, ReuseOptions

    cache_dir = args.cache_dir or (Path(env) if (env := _env("SOCI_WRAPPER_CACHE_DIR")) else None)
    reuse_from = []
    for text in args.reuse_from:
        ref = Reference.parse(text)
        if ref.registry != reference.registry:
            raise UsageError(
                f"--reuse-from {text} is on {ref.registry}, the image on {reference.registry}",
                hint="name an image of the same registry",
            )
        reuse_from.append(ref)
    if args.no_reuse and (args.reuse_from or args.cache_dir):
        raise UsageError("--no-reuse excludes --reuse-from and --cache-dir", hint="pick one")
    return ReuseOptions(
        enabled=not args.no_reuse,
        cache_dir=cache_dir,
        cache_max_bytes=args.cache_max_size or DEFAULT_CACHE_MAX_BYTES,
        reuse_from=tuple(reuse_from),
    )


def _check_ca_file(path: str) -> None:
    """--ca-file is read now: a missing or empty file is bad input, not a TLS failure of the registry."""
    try:
        ssl.create_default_context(cafile=path)
        return
    except ssl.SSLError as exc:
        problem = f"no PEM certificate in it ({exc.reason or exc})"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    raise UsageError(
        f"cannot use --ca-file {path}: {problem}",
        hint="pass a PEM file with the CA certificate that signed the registry's certificate",
    )


def _read_timeout(value: float | None) -> float:
    if value is None:
        return 120.0
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--registry-read-timeout must be a positive number of seconds, not {value}")
    return value


def _daemon_options(args: argparse.Namespace) -> Any:
    from wrapper.pipeline import DaemonOptions

    if args.work_dir is not None and args.work_dir.exists() and not args.work_dir.is_dir():
        raise UsageError(
            f"--work-dir {args.work_dir} is not a directory",
            hint="pass a directory, or a path where one can be made",
        )
    return DaemonOptions(
        containerd_address=args.containerd_address,
        containerd_bin=args.containerd_bin,
        namespace=args.namespace,
        work_dir=args.work_dir,
        keep_work_dir=args.keep_work_dir,
    )


# -- commands ----------------------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace, out: Console, err: Console, stdin: Callable[[], str]) -> int:
    from wrapper.pipeline import IndexRequest, run_index

    soci_version = args.soci_version or (_env("SOCI_WRAPPER_SOCI_VERSION") or "V1").upper()
    if soci_version not in ("V1", "V2"):
        raise UsageError(f"invalid SOCI version {soci_version!r}", hint="use V1 or V2")
    output_tag = args.output_tag or _env("SOCI_WRAPPER_OUTPUT_TAG")
    reporter = make_reporter(quiet=args.quiet)
    if soci_version == "V1" and output_tag:
        reporter.warn("--output-tag is ignored for SOCI index manifest v1")
        output_tag = None

    def request_for(reference: Any) -> IndexRequest:
        if output_tag:
            try:
                reference.with_tag(output_tag)  # checked now, not after the pull
            except UsageError as exc:
                raise UsageError(f"invalid --output-tag {output_tag!r}", hint=exc.hint) from None
        return IndexRequest(
            reference=reference,
            soci_version=soci_version,  # type: ignore[arg-type]
            output_tag=output_tag,
            pull=_pull_options(args),
            span_size=args.span_size,
            force=args.force,
            soci_bin=args.soci_bin,
            soci_timeout=args.soci_timeout,
            debug=args.debug,
            reuse=_reuse_options(args, reference),
        )

    if args.from_oci is not None:
        return _index_from_oci(args, request_for, out, stdin, reporter)
    many = _many_references(args, stdin)
    if many is not None:
        if args.verify:
            raise UsageError("--verify checks one image", hint="run `soci-wrapper verify` for each image")
        reporter.close()
        return _index_many(args, [request_for(ref) for ref in many], out, stdin)
    if args.max_concurrent_images is not None:
        raise UsageError("--max-concurrent-images goes with several images")
    request = request_for(_resolve_index_reference(args))
    registry_options = _registry_options(args, stdin)
    try:
        report = run_index(request, registry_options, _daemon_options(args), reporter)
        verified = (
            verify_indexed(request, report, registry_options, _daemon_options(args), reporter)
            if args.verify
            else None
        )
    finally:
        reporter.close()
    if args.json:
        doc = report.to_json()
        if verified is not None:
            doc["verify"] = verified.to_json()
        print(json.dumps(doc, indent=2))
        return verified.exit_code if verified is not None else ExitCode.OK
    if report.status == "not-an-image":
        err.print(f"{report.image} is not an image to index ({report.reason}); nothing to do")
        return ExitCode.OK
    if report.status == "already-indexed":
        err.print(
            f"already indexed: {report.image} ({report.digest}); nothing to do (use --force to rebuild)"
        )
    table = Table(title="SOCI index", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("image", report.image)
    table.add_row("digest", report.digest)
    table.add_row("status", report.status)
    table.add_row("SOCI version", report.soci_version)
    table.add_row("platforms", ", ".join(report.platforms))
    for idx in report.indexes:
        indexed = sum(x.size for x in idx.layers_indexed)
        skipped = sum(x.size for x in idx.layers_skipped)
        table.add_row(f"index {idx.platform}", idx.soci_index_digest)
        if idx.ztocs or idx.layers_indexed or idx.layers_skipped:
            reused = sum(1 for x in idx.layers if x.status == "reused")
            table.add_row(
                "",
                f"{_count(idx.ztocs, 'zTOC')}; {_count(len(idx.layers_indexed), 'layer')} indexed"
                f" ({human_size(indexed)})"
                + (f", {reused} of them reused" if reused else "")
                + f", {len(idx.layers_skipped)} skipped ({human_size(skipped)})",
            )
    for skip in report.not_indexed:
        table.add_row(f"no index {skip.platform}", skip.reason)
    if report.push and report.push.get("attempts", 1) > 1:
        table.add_row("push", f"{report.push['attempts']} attempts (transient registry errors retried)")
    if report.pushed_tag:
        table.add_row("pushed tag", f"{report.pushed_tag} ({report.output_digest or 'unchanged'})")
    table.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()))
    if report.work_dir:
        table.add_row("work dir", report.work_dir)
    out.print(table)
    if verified is not None:
        print_verify(out, verified)
        return verified.exit_code
    return ExitCode.OK


def _index_from_oci(
    args: argparse.Namespace,
    request_for: Callable[[Any], Any],
    out: Console,
    stdin: Callable[[], str],
    reporter: Any,
) -> int:
    """``index --from-oci PATH IMAGE_REF``: one image, from a layout, pushed to IMAGE_REF with its index."""
    from wrapper.pipeline import run_index_from_oci
    from wrapper.registry.reference import Reference

    try:
        if len(args.image_refs) != 1 or args.from_file or args.repo:
            raise UsageError("--from-oci PATH needs exactly one IMAGE_REF to push the image to")
        if args.max_concurrent_images is not None or args.verify:
            raise UsageError(
                "--from-oci indexes one image; --max-concurrent-images and --verify do not apply"
            )
        request = request_for(Reference.parse(args.image_refs[0]))
        report = run_index_from_oci(
            request, args.from_oci, _registry_options(args, stdin), _daemon_options(args), reporter
        )
    finally:
        reporter.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return ExitCode.OK
    table = Table(title="SOCI index", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("image", report.image)
    table.add_row("digest", report.digest)
    table.add_row("from", str(args.from_oci))
    table.add_row("SOCI version", report.soci_version)
    table.add_row("platforms", ", ".join(report.platforms))
    for idx in report.indexes:
        table.add_row(f"index {idx.platform}", idx.soci_index_digest)
    for skip in report.not_indexed:
        table.add_row(f"no index {skip.platform}", skip.reason)
    if report.pushed_tag:
        table.add_row("pushed tag", f"{report.pushed_tag} ({report.output_digest or 'unchanged'})")
    table.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()))
    out.print(table)
    return ExitCode.OK


def _many_references(args: argparse.Namespace, stdin: Callable[[], str]) -> list[Any] | None:
    """The images of a many-image run (several IMAGE_REFs, or --from-file), or None for one image."""
    from wrapper.registry.reference import Reference

    texts = list(args.image_refs)
    if args.from_file:
        if args.from_file == "-" and args.password_stdin:
            raise UsageError("--from-file - and --password-stdin both read standard input", hint="use a file")
        try:
            lines = (
                sys.stdin.read().splitlines()
                if args.from_file == "-"
                else Path(args.from_file).read_text().splitlines()
            )
        except OSError as exc:
            raise UsageError(f"cannot read --from-file {args.from_file}: {exc.strerror or exc}") from None
        texts += [line.split("#", 1)[0].strip() for line in lines]
        texts = [t for t in texts if t]
        if not texts:
            raise UsageError(f"--from-file {args.from_file} names no image", hint="one reference per line")
    elif len(texts) <= 1:
        return None
    if args.repo or args.digest or args.tag:
        raise UsageError("--repo/--digest/--tag name one ECR image", hint="give several images as IMAGE_REFs")
    refs: list[Any] = []
    for text in texts:
        ref = Reference.parse(text)
        if ref not in refs:
            refs.append(ref)
    return refs


def _index_many(args: argparse.Namespace, requests: list[Any], out: Console, stdin: Callable[[], str]) -> int:
    from wrapper.pipeline import DEFAULT_MAX_CONCURRENT_IMAGES, run_index_many

    reporter = make_reporter(quiet=args.quiet, force_plain=True)  # several images: lines, never bars
    try:
        batch = run_index_many(
            requests,
            _registry_options(args, stdin),
            _daemon_options(args),
            reporter,
            max_concurrent_images=args.max_concurrent_images or DEFAULT_MAX_CONCURRENT_IMAGES,
        )
    finally:
        reporter.close()
    code = ExitCode.SOME_FAILED if batch.failed else ExitCode.OK
    if args.json:
        print(json.dumps({**batch.to_json(), "exit_code": code}, indent=2))
        return code
    table = Table(title=f"SOCI indexes: {len(batch.images)} images", box=None)
    for column in ("image", "result", "SOCI index digests"):
        table.add_column(column, overflow="fold")
    for result in batch.images:
        if result.report is None:
            table.add_row(result.image, f"failed (exit {result.exit_code})", result.error or "")
        else:
            digests = ", ".join(f"{i.platform} {i.soci_index_digest}" for i in result.report.indexes)
            table.add_row(result.image, result.report.status, digests or result.report.reason or "")
    out.print(table)
    out.print(
        f"{len(batch.images) - len(batch.failed)} of {len(batch.images)} images done in {batch.seconds:.1f} s"
    )
    return code


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def cmd_pull(args: argparse.Namespace, out: Console, err: Console, stdin: Callable[[], str]) -> int:
    from wrapper.pipeline import run_pull
    from wrapper.registry.reference import Reference

    ref = Reference.parse(args.image_ref)
    options = _pull_options(args, full=args.full)
    registry_options = _registry_options(args, stdin)
    reporter = make_reporter(quiet=args.quiet)
    try:
        result = run_pull(ref, options, registry_options, _daemon_options(args), reporter)
    finally:
        reporter.close()
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        out.print(
            f"pulled {summary['image']} ({summary['digest']}) for {', '.join(summary['platforms'])}: "
            f"{summary['blobs_fetched']['count']} blobs fetched ({human_size(summary['blobs_fetched']['bytes'])}), "
            f"{summary['blobs_skipped']['count']} skipped ({human_size(summary['blobs_skipped']['bytes'])}), "
            f"{summary['blobs_present']['count']} already present, in {summary['seconds']:.1f} s",
            highlight=False,
        )
    return ExitCode.OK


def cmd_doctor(args: argparse.Namespace, out: Console, err: Console, stdin: Callable[[], str]) -> int:
    from wrapper.doctor import run_doctor

    report = run_doctor(
        containerd_address=args.containerd_address, containerd_bin=args.containerd_bin, soci_bin=args.soci_bin
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
            out.print(f"{mark} {check.name}: {check.detail}", highlight=False, markup=False)
            if check.fix and not check.ok:
                out.print(f"     fix: {check.fix}", highlight=False, markup=False)
    return ExitCode.OK if report.ok else ExitCode.MISSING_DEPENDENCY


def cmd_verify(args: argparse.Namespace, out: Console, err: Console, stdin: Callable[[], str]) -> int:
    from wrapper.verify.run import run_verify

    request = verify_request_from_args(args)
    registry_options = _registry_options(args, stdin)
    reporter = make_reporter(quiet=args.quiet)
    try:
        report = run_verify(request, registry_options, _daemon_options(args), reporter)
    finally:
        reporter.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_verify(out, report)
    error = report.error()  # NoSociIndexError (10) or SociIndexInvalidError (11); the report has the details
    if error is not None:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    return report.exit_code


HANDLERS = {"index": cmd_index, "pull": cmd_pull, "doctor": cmd_doctor, "verify": cmd_verify}


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    """The seed form has no subcommand: anything that is not help/version and names no command is 'index'."""
    args = list(argv)
    if not args:
        # CodeBuild may pass everything through the environment.
        return ["index"] if _env("SOCI_WRAPPER_REPO", "SOCI_WRAPPER_IMAGE") else args
    if args[0] in COMMANDS:
        return args
    if args[0] in ("-h", "--help", "--version"):
        return args
    return ["index", *args]


class Terminated(KeyboardInterrupt):
    """SIGTERM (CodeBuild stopping a build, ``timeout``): unwind like Ctrl-C so daemons and files are cleaned up."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their debug logs carry secrets (presigned URLs, ECR token responses): never below INFO.
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    no_color = bool(os.environ.get("NO_COLOR"))
    out = Console(no_color=no_color, highlight=False, soft_wrap=True)
    err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)
    as_json = bool(getattr(args, "json", False))
    try:
        return HANDLERS[args.command](args, out, err, sys.stdin.readline)
    except WrapperError as exc:
        return _fail(str(exc), exc.exit_code, exc.detail, as_json, debug)
    except KeyboardInterrupt:
        code = _fail("interrupted", ExitCode.INTERRUPTED, None, as_json, debug)
        # Everything this run started is stopped by now; a worker thread still blocked on a slow registry
        # must not hold the exit back (Python would join it).
        if any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
        ):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except Exception as exc:
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            ExitCode.UNEXPECTED,
            None,
            as_json,
            debug,
        )


def _fail(message: str, code: int, detail: str | None, as_json: bool, debug: bool) -> int:
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if detail:
        for line in detail.splitlines():
            print(f"  | {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

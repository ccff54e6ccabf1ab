"""The command line's arguments: the parser, its value types, and the help texts (exit codes, environment).
wrapper.cli.main turns what it parses into requests and runs them."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from wrapper import __version__
from wrapper.cli.verify import DESCRIPTION as VERIFY_DESCRIPTION
from wrapper.cli.verify import add_index_verify_flag, add_verify_arguments
from wrapper.core.errors import ExitCode, UsageError
from wrapper.core.models import Platform
from wrapper.core.options import DEFAULT_MIN_LAYER_SIZE

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
    g.add_argument(
        "--force",
        action="store_true",
        help="index and push even when the image already has an index",
    )
    add_index_verify_flag(g)
    g.add_argument(
        "--prefetch-file",
        action="append",
        default=[],
        metavar="PATH",
        help="a file of the image the snapshotter fetches before it mounts the layer holding it (a prefetch "
        "artifact per layer, in the index); repeatable",
    )
    g.add_argument(
        "--prefetch-files-json",
        type=Path,
        metavar="FILE",
        help='the same for every path of a JSON array in FILE (soci\'s format: ["/app/main.py", ...])',
    )
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
        "--overlap",
        choices=("auto", "always", "never"),
        default="auto",
        help="build each large layer's zTOC as soon as it is downloaded, while the pull goes on: 'auto' "
        "(default) does so unless the pull runs faster than 64 MiB/s per CPU (then the CPU, not the link, "
        "bounds the run, and the early builds would only take it from the pull)",
    )
    g.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_const",
        const="never",
        help="the same as --overlap never: build zTOCs only after the whole pull",
    )
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

"""The command line's parser: the option groups the commands share, and each command's own arguments.

A group that more than one command takes (output, registry access, containerd, the image and its platforms,
the ECR image) is defined once here, as an ``add_*`` function; each command's parser is a ``_<command>``
function that takes the groups it needs, in the order its help shows them, and adds its own. A new command
is one more such function in ``_COMMANDS`` (and its handler in wrapper.cli.main.HANDLERS). What the parser
returns becomes typed requests in wrapper.cli.requests; the value types are in wrapper.cli.values, the long
help texts in wrapper.cli.helptext."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeAlias

from wrapper import __version__
from wrapper.cli.helptext import (
    DESCRIPTION,
    ENV_HELP,
    EXIT_CODES_HELP,
    PROG,
    STARTUP_DESCRIPTION,
    VERIFY_DESCRIPTION,
)
from wrapper.cli.startup import add_container_options, add_startup_group
from wrapper.cli.values import (
    parse_namespace,
    parse_override,
    parse_platform,
    parse_seconds,
    parse_size,
)
from wrapper.core.errors import ExitCode
from wrapper.core.options import DEFAULT_MIN_LAYER_SIZE, DEFAULT_PREFETCH_MAX_FILES
from wrapper.verify.report import DEFAULT_FILES_PER_LAYER, LEVELS

_FORMAT = argparse.RawDescriptionHelpFormatter


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(ExitCode.USAGE)


Group: TypeAlias = argparse._ArgumentGroup
SubParsers: TypeAlias = "argparse._SubParsersAction[_Parser]"


# -- the shared groups ---------------------------------------------------------------------------------------
def add_output_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output; warnings and errors only")
    g.add_argument("--debug", action="store_true", help="verbose logs and tracebacks on errors")


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """How to reach registries (wrapper.cli.requests.registry_options)."""
    g = parser.add_argument_group("registry access")
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


def add_containerd_options(parser: argparse.ArgumentParser) -> None:
    """Where containerd comes from (wrapper.cli.requests.daemon_options)."""
    g = parser.add_argument_group("containerd")
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


def add_platform_options(parser: argparse.ArgumentParser) -> Group:
    """The platforms of the image (wrapper.cli.requests.platform_selection); returns the "image" group."""
    g = parser.add_argument_group("image")
    g.add_argument(
        "--platform", action="append", type=parse_platform, default=None, help="os/arch[/variant]; repeatable"
    )
    g.add_argument("--all-platforms", action="store_true", help="every platform of the image")
    return g


def add_download_options(group: Group) -> None:
    """What a pull downloads (wrapper.cli.requests.pull_options), in the "image" group."""
    group.add_argument(
        "--min-layer-size",
        type=parse_size,
        default=DEFAULT_MIN_LAYER_SIZE,
        help="layers smaller than this get no zTOC and are not downloaded (default: 10MiB)",
    )
    group.add_argument(
        "--max-concurrent-downloads", type=int, default=4, help="blobs in flight at once (default: 4)"
    )


def add_ecr_options(parser: argparse.ArgumentParser) -> None:
    """The ECR image, instead of IMAGE_REF (wrapper.cli.requests.image_reference)."""
    g = parser.add_argument_group("ECR image (instead of IMAGE_REF)")
    g.add_argument("--repo", help="ECR repository name")
    g.add_argument("--digest", help="image digest (sha256:...)")
    g.add_argument("--tag", help="image tag (instead of --digest)")
    g.add_argument("--region", help="AWS region of the repository")
    g.add_argument("--account", help="AWS account id (12 digits) that owns the repository")


def add_image_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """One image, named by IMAGE_REF (``args.image_ref``) or by the ECR options: resolve it with
    ``wrapper.cli.requests.image_reference(args, args.image_ref)``."""
    parser.add_argument("image_ref", nargs="?", metavar="IMAGE_REF", help=help)
    add_ecr_options(parser)


def add_soci_bin(group: Group) -> None:
    group.add_argument("--soci-bin", help="soci binary (default: $SOCI_BIN, .deps/bin/soci, then PATH)")


# -- the commands --------------------------------------------------------------------------------------------
def _index(sub: SubParsers) -> None:
    p = sub.add_parser(
        "index",
        formatter_class=_FORMAT,
        help="build and push a SOCI index for an image (the default command)",
        description="Build and push a SOCI index for IMAGE_REF, or for the ECR image named by --repo/--digest.",
        epilog=EXIT_CODES_HELP + "\n" + ENV_HELP,
    )
    add_output_options(p)
    add_download_options(add_platform_options(p))
    add_registry_options(p)
    add_containerd_options(p)
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
    add_ecr_options(p)
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
    g.add_argument(
        "--verify",
        action="store_true",
        help="after the push, check the index like `verify` does (its exit code when it is not valid)",
    )
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
    g.add_argument(
        "--prefetch-max-files",
        type=int,
        default=DEFAULT_PREFETCH_MAX_FILES,
        metavar="N",
        help="give soci at most N listed files (default %(default)s; 0: no cap): soci v0.15.0 holds ~1.8 MB of "
        "memory per listed file (1,000: ~1.7 GB). A longer list keeps the given files first, then an even "
        "sample of the recorded ones in first-access order, with a warning",
    )
    add_soci_bin(g)
    g = p.add_argument_group("prefetch list recorded from a start (--record-prefetch [...] [-- CMD ARGS])")
    g.add_argument(
        "--record-prefetch",
        action="store_true",
        help="first start the image (a full pull, in a containerd of its own) until it is ready, and make the "
        "files it opened on the way the prefetch list (with --prefetch-file/--prefetch-files-json: both)",
    )
    add_container_options(g)
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


def _pull(sub: SubParsers) -> None:
    p = sub.add_parser(
        "pull",
        formatter_class=_FORMAT,
        help="pull an image into containerd's content store (sparse by default)",
        description=(
            "Pull IMAGE_REF into containerd's content store over gRPC, without unpacking. Layers smaller than\n"
            "--min-layer-size are skipped unless --full. With a managed containerd the content is removed at\n"
            "the end unless --keep-work-dir; attach to a running containerd with --containerd-address to keep it."
        ),
        epilog=EXIT_CODES_HELP,
    )
    add_output_options(p)
    add_download_options(add_platform_options(p))
    add_registry_options(p)
    add_containerd_options(p)
    p.add_argument("image_ref", metavar="IMAGE_REF")
    p.add_argument("--full", action="store_true", help="download every layer, small ones too")


def _doctor(sub: SubParsers) -> None:
    p = sub.add_parser(
        "doctor",
        help="check that containerd and soci are installed and usable",
        description="Report what soci-wrapper would use and whether it works; non-zero exit if something is missing.",
    )
    add_output_options(p)
    p.add_argument("--containerd-address", help="check this containerd socket instead of the binary")
    p.add_argument("--containerd-bin", default="containerd")
    p.add_argument("--soci-bin")


def _verify(sub: SubParsers) -> None:
    p = sub.add_parser(
        "verify",
        formatter_class=_FORMAT,
        help="check that an image's SOCI index serves lazy loading (registry, content, snapshotter)",
        description=VERIFY_DESCRIPTION,
        epilog=EXIT_CODES_HELP + "\n" + ENV_HELP,
    )
    add_output_options(p)
    add_registry_options(p)
    add_containerd_options(p)
    add_image_argument(p, help="the image (or SOCI-enabled image) to check")
    add_platform_options(p)
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
    add_soci_bin(g)
    g.add_argument(
        "--snapshotter-bin",
        help="soci-snapshotter-grpc (default: $SOCI_SNAPSHOTTER_BIN, .deps/bin/soci-snapshotter-grpc, then PATH)",
    )
    g.add_argument("--soci-timeout", type=float, default=600.0, help="seconds each soci call may take")


def _startup(sub: SubParsers) -> None:
    p = sub.add_parser(
        "startup",
        formatter_class=_FORMAT,
        help="start a container of an image and time it: lazily through the SOCI snapshotter (and from a full pull)",
        description=STARTUP_DESCRIPTION,
        epilog=EXIT_CODES_HELP,
    )
    add_output_options(p)
    add_registry_options(p)
    add_containerd_options(p)
    p.add_argument(
        "image_ref", metavar="IMAGE_REF", help="the image to start (for lazy loading: its SOCI-enabled image)"
    )
    g = p.add_argument_group("image")
    g.add_argument(
        "--platform", type=parse_platform, default=None, help="os/arch[/variant] (default: this host's)"
    )
    g.add_argument(
        "--max-concurrent-downloads",
        type=int,
        default=4,
        help="blobs in flight at once in a full pull (default: 4)",
    )
    add_startup_group(p)


# The commands, in the order --help lists them.
_COMMANDS: dict[str, Callable[[SubParsers], None]] = {
    "index": _index,
    "pull": _pull,
    "doctor": _doctor,
    "verify": _verify,
    "startup": _startup,
}
COMMANDS = tuple(_COMMANDS)


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG, formatter_class=_FORMAT, description=DESCRIPTION, epilog=EXIT_CODES_HELP + "\n" + ENV_HELP
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add_command in _COMMANDS.values():
        add_command(sub)
    return parser


__all__ = ["COMMANDS", "PROG", "build_parser", "parse_platform", "parse_size"]

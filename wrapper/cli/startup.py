"""``soci-wrapper startup IMAGE_REF [-- CMD ARGS...]``: the command's request, its run and its summary.

Everything after the first ``--`` is the container's command (``split_container_command``, before argparse
sees it: the command may look like our options)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from wrapper.cli.display import make_reporter
from wrapper.cli.requests import ReadLine, daemon_options, registry_options
from wrapper.cli.values import parse_seconds, parse_size
from wrapper.core.errors import ExitCode, UsageError
from wrapper.core.progress import human_size
from wrapper.core.reference import Reference

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from wrapper.startup.report import StartupReport
    from wrapper.startup.run import StartupRequest

COMMAND = "startup"


def split_container_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``startup ... -- CMD ARGS``: (our arguments, the container's command); None when there is no ``--``."""
    args = list(argv)
    if not args or args[0] != COMMAND or "--" not in args:
        return args, None
    at = args.index("--")
    return args[:at], args[at + 1 :]


def startup_request(args: argparse.Namespace) -> StartupRequest:
    from wrapper.startup.container import Readiness, ReadyMode
    from wrapper.startup.run import StartupRequest
    from wrapper.startup.spec import Limits, parse_env

    if args.containerd_address:
        raise UsageError(
            "startup runs containers in a containerd of its own: --containerd-address is not supported",
            hint="leave it out (--containerd-bin picks the containerd to start)",
        )
    command = getattr(args, "container_command", None)
    if command is not None and not command:
        raise UsageError("nothing after --: give the container's command, or leave out the --")
    if args.ready_log is not None and args.ready_port is not None:
        raise UsageError(
            "--ready-log and --ready-port exclude each other", hint="pick one readiness condition"
        )
    if args.ready_port is not None and not 0 < args.ready_port < 65536:
        raise UsageError(f"--ready-port {args.ready_port} is not a TCP port (1-65535)")
    if args.no_lazy and args.baseline:
        raise UsageError("--no-lazy runs only the full pull: --baseline adds nothing to it", hint="use one")
    if args.pids < 1:
        raise UsageError("--pids must be at least 1")
    pattern = None
    if args.ready_log is not None:
        try:
            pattern = re.compile(args.ready_log)
        except re.error as exc:
            raise UsageError(
                f"--ready-log {args.ready_log!r} is not a valid regular expression: {exc}"
            ) from None
    mode: ReadyMode = "log" if pattern is not None else "port" if args.ready_port is not None else "exit"
    return StartupRequest(
        reference=Reference.parse(args.image_ref),
        command=tuple(command) if command is not None else None,
        env=parse_env(args.env),
        readiness=Readiness(mode, pattern, args.ready_port, args.timeout),
        record=args.record,
        baseline=args.baseline,
        lazy=not args.no_lazy,
        platform=args.platform,
        limits=Limits(memory_bytes=args.memory, pids=args.pids),
        containerd_bin=args.containerd_bin,
        snapshotter_bin=args.snapshotter_bin,
        namespace=args.namespace,
        max_concurrent_downloads=args.max_concurrent_downloads,
    )


def cmd_startup(args: argparse.Namespace, out: Console, err: Console, stdin: ReadLine) -> int:
    from wrapper.run.session import check_containerd, open_registry, run_directory
    from wrapper.startup.run import run_startup

    request = startup_request(args)
    daemon = daemon_options(args)
    check_containerd(daemon)
    registry = registry_options(args, stdin)
    reporter = make_reporter(quiet=args.quiet)
    try:
        with open_registry(request.reference, registry) as client, run_directory(daemon) as run_dir:
            report = run_startup(request, client, run_dir, reporter)
    finally:
        reporter.close()
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_startup(out, report)
    for warning in report.warnings:
        err.print(f"warning: {warning}", highlight=False, markup=False)
    return ExitCode.OK


def print_startup(out: Console, report: StartupReport) -> None:
    table = Table(title=f"start-up of {report.image}", title_justify="left")
    for name in ("variant", "pull", "ready", "total", "fetched", "layers lazily"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    for v in report.variants:
        table.add_row(
            f"{v.name} ({v.snapshotter})",
            f"{v.pull_seconds:.2f} s",
            f"{v.ready_seconds:.2f} s",
            f"{v.total_seconds:.2f} s",
            human_size(v.bytes_fetched),
            f"{v.lazy_layers} of {len(v.layers)}" if v.name == "lazy" else "-",
        )
    out.print(table)
    out.print(
        f"ready when {report.readiness}; command: {' '.join(report.args)}", highlight=False, markup=False
    )
    if report.verdict:
        out.print(report.verdict, highlight=False, markup=False)
    if report.record_file is not None:
        files = len(report.recorded or [])
        out.print(f"recorded {files} files opened before ready into {report.record_file}", markup=False)


def add_startup_group(parser: argparse.ArgumentParser) -> None:
    """The command's own options (the shared groups are added by wrapper.cli.arguments)."""
    g = parser.add_argument_group("start-up")
    g.add_argument(
        "--baseline",
        action="store_true",
        help="also start it from a full pull through overlayfs, and compare",
    )
    g.add_argument("--no-lazy", action="store_true", help="only the full pull (no SOCI snapshotter)")
    g.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="write the files the container opened before it was ready, in soci's --prefetch-files-json format",
    )
    g.add_argument("--ready-log", metavar="REGEX", help="ready once a line of its output matches REGEX")
    g.add_argument(
        "--ready-port",
        type=int,
        metavar="N",
        help="ready once port N accepts connections in its network namespace",
    )
    g.add_argument(
        "--timeout", type=parse_seconds, default=120.0, help="seconds it may take to be ready (default: 120)"
    )
    g.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="set an environment variable; repeatable"
    )
    g.add_argument("--memory", type=parse_size, default=1 << 30, help="memory limit (default: 1GiB)")
    g.add_argument("--pids", type=int, default=1024, help="process limit (default: 1024)")
    g.add_argument(
        "--snapshotter-bin",
        help="soci-snapshotter-grpc (default: $SOCI_SNAPSHOTTER_BIN, this Python's scripts directory, then PATH)",
    )

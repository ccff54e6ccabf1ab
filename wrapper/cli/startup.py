"""``soci-wrapper startup IMAGE_REF [-- CMD ARGS...]``: the command's request, its run and its summary; and the
container options it shares with ``index --record-prefetch`` (readiness, environment, limits, ``-- CMD``),
read into a ``StartupRecorder`` for that.

Everything after the first ``--`` is the container's command (``split_container_command``, before argparse
sees it: the command may look like our options)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from wrapper.cli.display import make_reporter
from wrapper.cli.requests import ReadLine, daemon_options, registry_options
from wrapper.cli.values import parse_seconds, parse_size
from wrapper.core.errors import ExitCode, UsageError
from wrapper.core.options import DaemonOptions, RegistryOptions
from wrapper.core.progress import human_size
from wrapper.core.reference import Reference

if TYPE_CHECKING:  # imported when the command runs, not for --help
    from wrapper.core.progress import Reporter
    from wrapper.startup.container import Readiness
    from wrapper.startup.prefetch import StartupRecorder
    from wrapper.startup.report import StartupReport
    from wrapper.startup.run import StartupRequest
    from wrapper.startup.spec import Limits

COMMAND = "startup"
# The commands that start a container and so take its command after ``--``.
WITH_CONTAINER_COMMAND = (COMMAND, "index")


def split_container_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``startup ... -- CMD ARGS`` (and ``index --record-prefetch ... -- CMD ARGS``): (our arguments, the
    container's command); None when there is no ``--``."""
    args = list(argv)
    if not args or args[0] not in WITH_CONTAINER_COMMAND or "--" not in args:
        return args, None
    at = args.index("--")
    return args[:at], args[at + 1 :]


@dataclass(frozen=True)
class ContainerSettings:
    """What the container options say: its command (None: the image's Cmd), extra environment, readiness and
    limits."""

    command: tuple[str, ...] | None
    env: tuple[str, ...]
    readiness: Readiness
    limits: Limits


def container_settings(args: argparse.Namespace) -> ContainerSettings:
    """The container options (``add_container_options``) and ``-- CMD``, checked."""
    from wrapper.startup.container import Readiness, ReadyMode
    from wrapper.startup.spec import DEFAULT_MEMORY, DEFAULT_PIDS, Limits, parse_env

    command = getattr(args, "container_command", None)
    if command is not None and not command:
        raise UsageError("nothing after --: give the container's command, or leave out the --")
    if args.ready_log is not None and args.ready_port is not None:
        raise UsageError(
            "--ready-log and --ready-port exclude each other", hint="pick one readiness condition"
        )
    if args.ready_port is not None and not 0 < args.ready_port < 65536:
        raise UsageError(f"--ready-port {args.ready_port} is not a TCP port (1-65535)")
    pids = DEFAULT_PIDS if args.pids is None else args.pids
    if pids < 1:
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
    timeout = Readiness().timeout if args.timeout is None else args.timeout
    memory = DEFAULT_MEMORY if args.memory is None else args.memory
    return ContainerSettings(
        command=tuple(command) if command is not None else None,
        env=parse_env(args.env),
        readiness=Readiness(mode, pattern, args.ready_port, timeout),
        limits=Limits(memory_bytes=memory, pids=pids),
    )


def startup_request(args: argparse.Namespace) -> StartupRequest:
    if args.containerd_address:
        raise UsageError(
            "startup runs containers in a containerd of its own: --containerd-address is not supported",
            hint="leave it out (--containerd-bin picks the containerd to start)",
        )
    recorder = _recorder(args)
    if args.no_lazy and args.baseline:
        raise UsageError("--no-lazy runs only the full pull: --baseline adds nothing to it", hint="use one")
    one_start = recorder.startup_request(Reference.parse(args.image_ref), args.platform, args.record)
    return dataclasses.replace(
        one_start, baseline=args.baseline, lazy=not args.no_lazy, snapshotter_bin=args.snapshotter_bin
    )


def prefetch_recorder(args: argparse.Namespace) -> StartupRecorder | None:
    """``index --record-prefetch``: how the recorded start runs (None without it; the container options
    without it are a usage error: they would be ignored)."""
    if not args.record_prefetch:
        given = [
            flag
            for flag, value in (
                ("--ready-log", args.ready_log),
                ("--ready-port", args.ready_port),
                ("--timeout", args.timeout),
                ("--env", args.env or None),
                ("--memory", args.memory),
                ("--pids", args.pids),
                ("-- CMD", getattr(args, "container_command", None)),
            )
            if value is not None
        ]
        if given:
            raise UsageError(
                f"{given[0]} is for the recorded start: it goes with --record-prefetch",
                hint="add --record-prefetch, or leave it out",
            )
        return None
    return _recorder(args)


def _recorder(args: argparse.Namespace) -> StartupRecorder:
    """How a container of the image is started (the container options, containerd, namespace, downloads)."""
    from wrapper.startup.prefetch import StartupRecorder

    settings = container_settings(args)
    return StartupRecorder(
        command=settings.command,
        env=settings.env,
        readiness=settings.readiness,
        limits=settings.limits,
        containerd_bin=args.containerd_bin,
        namespace=args.namespace,
        max_concurrent_downloads=args.max_concurrent_downloads,
    )


def start_image(
    request: StartupRequest, registry: RegistryOptions, daemon: DaemonOptions, reporter: Reporter
) -> StartupReport:
    """``startup``'s run, for the command line and wrapper.api: containerd checked, a registry client and a run
    directory (removed afterwards unless kept) made as ``index`` makes them."""
    from wrapper.run.session import check_containerd, open_registry, run_directory
    from wrapper.startup.run import run_startup

    if daemon.containerd_address:
        raise UsageError(
            "startup runs containers in a containerd of its own: containerd_address is not supported",
            hint="leave it out (containerd_bin picks the containerd to start)",
        )
    check_containerd(daemon)
    with open_registry(request.reference, registry) as client, run_directory(daemon) as run_dir:
        return run_startup(request, client, run_dir, reporter)


def cmd_startup(args: argparse.Namespace, out: Console, err: Console, stdin: ReadLine) -> int:
    request = startup_request(args)
    daemon = daemon_options(args)
    registry = registry_options(args, stdin)
    reporter = make_reporter(quiet=args.quiet)
    try:
        report = start_image(request, registry, daemon, reporter)
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
    for v in report.variants:
        if v.prefetch:
            spans = sum(p.span_ranges or 0 for p in v.prefetch)
            out.print(
                f"{v.name}: the snapshotter loaded {len(v.prefetch)} prefetch artifacts and fetched their "
                f"{spans} span ranges before mounting their layers",
                highlight=False,
                markup=False,
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
    add_container_options(g)
    g.add_argument(
        "--snapshotter-bin",
        help="soci-snapshotter-grpc (default: $SOCI_SNAPSHOTTER_BIN, this Python's scripts directory, then PATH)",
    )


def add_container_options(g: argparse._ArgumentGroup) -> None:
    """When a started container counts as ready, its environment and limits (``container_settings``): for
    ``startup`` and ``index --record-prefetch``. Defaults are None here (filled in by container_settings), so
    that ``index`` can tell a flag given without --record-prefetch."""
    g.add_argument("--ready-log", metavar="REGEX", help="ready once a line of its output matches REGEX")
    g.add_argument(
        "--ready-port",
        type=int,
        metavar="N",
        help="ready once port N accepts connections in its network namespace",
    )
    g.add_argument(
        "--timeout", type=parse_seconds, default=None, help="seconds it may take to be ready (default: 120)"
    )
    g.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="set an environment variable; repeatable"
    )
    g.add_argument("--memory", type=parse_size, default=None, help="memory limit (default: 1GiB)")
    g.add_argument("--pids", type=int, default=None, help="process limit (default: 1024)")

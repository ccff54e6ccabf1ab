"""Command line: the commands and the program's entry point (logging, signals, one-line errors, exit codes).

Each command builds its requests (wrapper.cli.requests), runs them (wrapper.run, wrapper.verify) with a progress
display (wrapper.cli.display), and prints the report: ``--json``, or the tables of wrapper.cli.summary."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from wrapper.cli.arguments import COMMANDS, PROG, build_parser
from wrapper.cli.display import make_reporter
from wrapper.cli.requests import (
    IndexJob,
    ReadLine,
    daemon_options,
    env,
    index_job,
    pull_options,
    registry_options,
    verify_after_index,
    verify_request,
)
from wrapper.cli.startup import cmd_startup, split_container_command
from wrapper.cli.summary import doctor_lines, print_batch, print_index, print_verify, pull_line
from wrapper.cli.values import parse_platform, parse_size
from wrapper.core.errors import ExitCode, WrapperError
from wrapper.core.progress import Reporter
from wrapper.core.reference import Reference
from wrapper.system.supervisor import deliver_signal

if TYPE_CHECKING:  # the run's modules are imported when a command runs, not for --help
    from wrapper.core.options import IndexRequest
    from wrapper.core.report import IndexReport
    from wrapper.run.batch import BatchReport
    from wrapper.verify.report import VerifyReport

Handler = Callable[[argparse.Namespace, Console, Console, ReadLine], int]


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2))


# -- index ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _IndexResult:
    """What an ``index`` run gave: one image's report (and its verification), or a many-image run's."""

    job: IndexJob
    report: IndexReport | None = None
    verified: VerifyReport | None = None
    batch: BatchReport | None = None


def cmd_index(args: argparse.Namespace, out: Console, err: Console, stdin: ReadLine) -> int:
    reporter = make_reporter(quiet=args.quiet)
    try:
        job = index_job(args, stdin, reporter.warn)
        if job.many:
            reporter.close()
            reporter = make_reporter(quiet=args.quiet, force_plain=True)  # several images: lines, never bars
        result = _run_index(job, reporter)
    finally:
        reporter.close()
    return _show_index(result, out, err, as_json=bool(args.json))


def _run_index(job: IndexJob, reporter: Reporter) -> _IndexResult:
    from wrapper.run.batch import DEFAULT_MAX_CONCURRENT_IMAGES, run_index_many
    from wrapper.run.pipeline import run_index, run_index_from_oci

    if job.many:
        batch = run_index_many(
            list(job.requests),
            job.registry,
            job.daemon,
            reporter,
            max_concurrent_images=job.max_concurrent_images or DEFAULT_MAX_CONCURRENT_IMAGES,
        )
        return _IndexResult(job, batch=batch)
    (request,) = job.requests
    if job.from_oci is not None:
        return _IndexResult(
            job, run_index_from_oci(request, job.from_oci, job.registry, job.daemon, reporter, job.recorder)
        )
    report = run_index(request, job.registry, job.daemon, reporter, job.recorder)
    verified = _verify_indexed(job, request, report, reporter) if job.verify else None
    return _IndexResult(job, report, verified)


def _verify_indexed(
    job: IndexJob, request: IndexRequest, report: IndexReport, reporter: Reporter
) -> VerifyReport | None:
    """``index --verify``: check what the run pushed (None: nothing to check)."""
    from wrapper.verify.run import run_verify

    verify = verify_after_index(request, report)
    if verify is None:
        return None
    reporter.stage("verify", f"{verify.reference}")
    return run_verify(verify, job.registry, job.daemon, reporter)


def _show_index(result: _IndexResult, out: Console, err: Console, *, as_json: bool) -> int:
    if result.batch is not None:
        code = ExitCode.SOME_FAILED if result.batch.failed else ExitCode.OK
        if as_json:
            _print_json({**result.batch.to_json(), "exit_code": code})
        else:
            print_batch(out, result.batch)
        return code
    report, verified = result.report, result.verified
    assert report is not None
    code = verified.exit_code if verified is not None else ExitCode.OK
    if as_json:
        doc = report.to_json()
        if verified is not None:
            doc["verify"] = verified.to_json()
        _print_json(doc)
        return code
    print_index(out, err, report, source=result.job.from_oci)
    if verified is not None:
        print_verify(out, verified)
    return code


# -- pull, doctor, verify ------------------------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace, out: Console, err: Console, stdin: ReadLine) -> int:
    from wrapper.run.pipeline import run_pull

    ref = Reference.parse(args.image_ref)
    options = pull_options(args, full=args.full)
    registry = registry_options(args, stdin)
    reporter = make_reporter(quiet=args.quiet)
    try:
        result = run_pull(ref, options, registry, daemon_options(args), reporter)
    finally:
        reporter.close()
    summary = result.summary()
    if args.json:
        _print_json(summary)
    else:
        out.print(pull_line(summary), highlight=False)
    return ExitCode.OK


def cmd_doctor(args: argparse.Namespace, out: Console, err: Console, stdin: ReadLine) -> int:
    from wrapper.run.doctor import run_doctor

    report = run_doctor(
        containerd_address=args.containerd_address, containerd_bin=args.containerd_bin, soci_bin=args.soci_bin
    )
    if args.json:
        _print_json(report.to_json())
    else:
        for line in doctor_lines(report):
            out.print(line, highlight=False, markup=False)
    return ExitCode.OK if report.ok else ExitCode.MISSING_DEPENDENCY


def cmd_verify(args: argparse.Namespace, out: Console, err: Console, stdin: ReadLine) -> int:
    from wrapper.verify.run import run_verify

    request = verify_request(args)
    registry = registry_options(args, stdin)
    reporter = make_reporter(quiet=args.quiet)
    try:
        report = run_verify(request, registry, daemon_options(args), reporter)
    finally:
        reporter.close()
    if args.json:
        _print_json(report.to_json())
    else:
        print_verify(out, report)
    error = report.error()  # NoSociIndexError (10) or SociIndexInvalidError (11); the report has the details
    if error is not None:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    return report.exit_code


HANDLERS: dict[str, Handler] = {
    "index": cmd_index,
    "pull": cmd_pull,
    "doctor": cmd_doctor,
    "verify": cmd_verify,
    "startup": cmd_startup,
}
assert set(HANDLERS) == set(COMMANDS), "every command of the parser has a handler"


# -- the program ---------------------------------------------------------------------------------------------
def _normalise_argv(argv: Sequence[str]) -> list[str]:
    """The seed form has no subcommand: anything that is not help/version and names no command is 'index'."""
    args = list(argv)
    if not args:
        # CodeBuild may pass everything through the environment.
        return ["index"] if env("SOCI_WRAPPER_REPO", "SOCI_WRAPPER_IMAGE") else args
    if args[0] in COMMANDS:
        return args
    if args[0] in ("-h", "--help", "--version"):
        return args
    return ["index", *args]


class _Plain(logging.Formatter):
    """Log records as the progress display writes its warnings (``warning: ...``); ``--debug`` adds the level
    in capitals and the logger's name."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.message}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (CodeBuild stopping a build, ``timeout``): unwind like Ctrl-C so daemons and files are cleaned up."""


def _on_sigterm(signum: int, frame: object) -> None:
    deliver_signal(Terminated())


def _on_sigint(signum: int, frame: object) -> None:
    deliver_signal(KeyboardInterrupt())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)
    parser = build_parser()
    # startup ... -- CMD ARGS, index --record-prefetch ... -- CMD ARGS
    ours, container_command = split_container_command(_normalise_argv(argv))
    args = parser.parse_args(ours)
    args.container_command = container_command
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    debug = bool(getattr(args, "debug", False))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if debug else _Plain())
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
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


__all__ = ["PROG", "build_parser", "main", "parse_platform", "parse_size"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

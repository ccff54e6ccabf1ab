"""Command line: requests from the parsed arguments (wrapper.cli.arguments), output (rich or JSON) and exit codes.
The work happens in wrapper.run.pipeline (and wrapper.run.batch, wrapper.verify)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wrapper.cli.arguments import (
    COMMANDS,
    PROG,
    _env,
    build_parser,
    parse_platform,
    parse_size,
)
from wrapper.cli.display import make_reporter
from wrapper.cli.verify import print_verify, verify_indexed
from wrapper.cli.verify import request_from_args as verify_request_from_args
from wrapper.core.errors import ExitCode, UsageError, WrapperError
from wrapper.core.models import Platform, validate_digest
from wrapper.core.options import PullOptions
from wrapper.core.progress import human_size
from wrapper.soci.runner import deliver_signal


def _resolve_index_reference(args: argparse.Namespace) -> Any:
    from wrapper.core.reference import Reference

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
    from wrapper.core.options import RegistryOptions

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
    from wrapper.core.options import DEFAULT_CACHE_MAX_BYTES, ReuseOptions
    from wrapper.core.reference import Reference

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
    from wrapper.core.options import DaemonOptions

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
    from wrapper.core.options import IndexRequest, prefetch_list
    from wrapper.run.pipeline import run_index

    soci_version = args.soci_version or (_env("SOCI_WRAPPER_SOCI_VERSION") or "V1").upper()
    if soci_version not in ("V1", "V2"):
        raise UsageError(f"invalid SOCI version {soci_version!r}", hint="use V1 or V2")
    output_tag = args.output_tag or _env("SOCI_WRAPPER_OUTPUT_TAG")
    prefetch = prefetch_list(args.prefetch_file, args.prefetch_files_json)  # read now: bad input exits 2
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
            overlap=args.overlap,
            prefetch_files=prefetch,
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
        if prefetch_line := idx.prefetch_summary():
            table.add_row("", prefetch_line)
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
    from wrapper.core.reference import Reference
    from wrapper.run.pipeline import run_index_from_oci

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
        if prefetch_line := idx.prefetch_summary():
            table.add_row("", prefetch_line)
    for skip in report.not_indexed:
        table.add_row(f"no index {skip.platform}", skip.reason)
    if report.pushed_tag:
        table.add_row("pushed tag", f"{report.pushed_tag} ({report.output_digest or 'unchanged'})")
    table.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()))
    out.print(table)
    return ExitCode.OK


def _many_references(args: argparse.Namespace, stdin: Callable[[], str]) -> list[Any] | None:
    """The images of a many-image run (several IMAGE_REFs, or --from-file), or None for one image."""
    from wrapper.core.reference import Reference

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
    from wrapper.run.batch import DEFAULT_MAX_CONCURRENT_IMAGES, run_index_many

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
    from wrapper.core.reference import Reference
    from wrapper.run.pipeline import run_pull

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
    from wrapper.run.doctor import run_doctor

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
    args = parser.parse_args(_normalise_argv(argv))
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

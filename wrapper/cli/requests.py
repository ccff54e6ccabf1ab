"""From the parsed command line and the environment to the typed requests a run takes (wrapper.core.options,
wrapper.verify.run.VerifyRequest). The one place that reads the environment variables of the README's
"Environment" table, and (with wrapper.cli.main) the one place that reads argparse's untyped Namespace: every
function here returns a typed value.

Flags win over the environment. Every command that names an image by IMAGE_REF or by the ECR flags resolves it
with ``image_reference`` (so ``verify --repo R --digest D`` reads SOCI_WRAPPER_REGION exactly as ``index`` does);
every command that selects platforms reads them with ``platform_selection``."""

from __future__ import annotations

import argparse
import math
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wrapper.core.errors import UsageError
from wrapper.core.models import Platform, validate_digest
from wrapper.core.options import (
    DEFAULT_CACHE_MAX_BYTES,
    DaemonOptions,
    IndexRequest,
    PullOptions,
    RegistryOptions,
    ReuseOptions,
    SociVersion,
    prefetch_list,
)
from wrapper.core.reference import Reference

if TYPE_CHECKING:  # the run's modules are imported when a command runs, not for --help
    from wrapper.core.report import IndexReport
    from wrapper.startup.prefetch import StartupRecorder
    from wrapper.verify.run import SociVersionChoice, VerifyRequest

ReadLine = Callable[[], str]  # standard input, for --password-stdin
Warn = Callable[[str], None]


def env(*names: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The first of ``names`` set to a non-empty value in the environment."""
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


# -- the image ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageArguments:
    """How the command line names one image: IMAGE_REF, or the ECR image of --repo with --digest or --tag,
    --region and --account. None: not given on the command line (the environment may still give it)."""

    image_ref: str | None = None
    repo: str | None = None
    digest: str | None = None
    tag: str | None = None
    region: str | None = None
    account: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, image_ref: str | None) -> ImageArguments:
        """``image_ref``: the command's IMAGE_REF (index takes several, verify one); the rest from the ECR flags."""
        return cls(image_ref, args.repo, args.digest, args.tag, args.region, args.account)


def resolve_image(given: ImageArguments, environ: Mapping[str, str] | None = None) -> Reference:
    """The image named by ``given`` and, where a flag is missing, the environment:

    ====================  =====================================================
    IMAGE_REF             SOCI_WRAPPER_IMAGE
    --repo                SOCI_WRAPPER_REPO
    --digest, --tag       SOCI_WRAPPER_DIGEST, SOCI_WRAPPER_TAG
    --region              SOCI_WRAPPER_REGION, then AWS_REGION, AWS_DEFAULT_REGION
    --account             SOCI_WRAPPER_ACCOUNT, then AWS_ACCOUNT_ID
    ====================  =====================================================
    """

    def get(flag: str | None, *names: str) -> str | None:
        return flag or env(*names, environ=environ)

    image_ref = get(given.image_ref, "SOCI_WRAPPER_IMAGE")
    repo = get(given.repo, "SOCI_WRAPPER_REPO")
    digest = get(given.digest, "SOCI_WRAPPER_DIGEST")
    tag = get(given.tag, "SOCI_WRAPPER_TAG")
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
    region = get(given.region, "SOCI_WRAPPER_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    account = get(given.account, "SOCI_WRAPPER_ACCOUNT", "AWS_ACCOUNT_ID")
    if not region:
        raise UsageError("--repo needs --region (or AWS_REGION)")
    if not account:
        raise UsageError("--repo needs --account (or SOCI_WRAPPER_ACCOUNT)")
    if not digest and not tag:
        raise UsageError("--repo needs --digest (or --tag)")
    if digest:
        validate_digest(digest)
    return Reference.ecr(account, region, repo, digest=digest, tag=tag)


def image_reference(args: argparse.Namespace, image_ref: str | None) -> Reference:
    """The one image of a command that names it by IMAGE_REF (``image_ref``) or the ECR flags."""
    return resolve_image(ImageArguments.from_args(args, image_ref))


def index_reference(args: argparse.Namespace) -> Reference:
    """``index``'s one image: its first IMAGE_REF, or the ECR flags."""
    return image_reference(args, args.image_refs[0] if args.image_refs else None)


def platform_selection(args: argparse.Namespace) -> tuple[tuple[Platform, ...], bool]:
    """--platform (repeatable) and --all-platforms, or SOCI_WRAPPER_PLATFORMS when neither is given
    (comma-separated, or ``all``): ``(platforms, all_platforms)``."""
    platforms: list[Platform] = list(args.platform or ())
    all_platforms = bool(args.all_platforms)
    if not platforms and not all_platforms and (text := env("SOCI_WRAPPER_PLATFORMS")):
        if text.strip().lower() == "all":
            all_platforms = True
        else:
            platforms = [Platform.parse(p) for p in text.split(",") if p.strip()]
    return tuple(platforms), all_platforms


def pull_options(args: argparse.Namespace, *, full: bool = False) -> PullOptions:
    platforms, all_platforms = platform_selection(args)
    return PullOptions(
        platforms=platforms,
        all_platforms=all_platforms,
        min_layer_size=args.min_layer_size,
        full=full,
        max_concurrent_downloads=args.max_concurrent_downloads,
    )


# -- registry and containerd ---------------------------------------------------------------------------------
def registry_options(args: argparse.Namespace, stdin: ReadLine) -> RegistryOptions:
    """The registry access group; --password-stdin reads the password now."""
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
    docker_config: Path | None = args.docker_config
    if docker_config is not None and docker_config.exists() and not docker_config.is_dir():
        raise UsageError(
            f"--docker-config {docker_config} is not a directory",
            hint="pass the directory that holds config.json",
        )
    if args.ca_file:
        _check_ca_file(args.ca_file)
    return RegistryOptions(
        username=args.username,
        password=password,
        docker_config=docker_config,
        ca_file=args.ca_file,
        plain_http=args.plain_http,
        endpoint_overrides=tuple(args.endpoint_override),
        read_timeout=_read_timeout(args.registry_read_timeout),
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


def daemon_options(args: argparse.Namespace) -> DaemonOptions:
    """The containerd group: attach to a socket, or start one (and where the run keeps its files)."""
    work_dir: Path | None = args.work_dir
    if work_dir is not None and work_dir.exists() and not work_dir.is_dir():
        raise UsageError(
            f"--work-dir {work_dir} is not a directory",
            hint="pass a directory, or a path where one can be made",
        )
    return DaemonOptions(
        containerd_address=args.containerd_address,
        containerd_bin=args.containerd_bin,
        namespace=args.namespace,
        work_dir=work_dir,
        keep_work_dir=args.keep_work_dir,
    )


# -- index ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexJob:
    """What ``index`` was asked to do: one image, several (``many``), or the image of an OCI layout
    (``from_oci``) pushed to the one reference; with ``recorder`` (--record-prefetch), a start of it recorded
    first for the prefetch list; then, with ``verify``, check what was pushed."""

    requests: tuple[IndexRequest, ...]
    registry: RegistryOptions
    daemon: DaemonOptions
    many: bool = False
    from_oci: Path | None = None
    verify: bool = False
    max_concurrent_images: int | None = None
    recorder: StartupRecorder | None = None


def index_job(args: argparse.Namespace, stdin: ReadLine, warn: Warn) -> IndexJob:
    """The requests of ``index`` (each image's, with the options they share). Usage errors come in the
    order a user fixes them: the SOCI version, which images, each image's options, registry, containerd."""
    from wrapper.cli.startup import prefetch_recorder

    settings = _index_settings(args, warn)
    recorder = prefetch_recorder(args)
    many = False
    if args.from_oci is not None:
        if len(args.image_refs) != 1 or args.from_file or args.repo:
            raise UsageError("--from-oci PATH needs exactly one IMAGE_REF to push the image to")
        if args.max_concurrent_images is not None or args.verify:
            raise UsageError(
                "--from-oci indexes one image; --max-concurrent-images and --verify do not apply"
            )
        references = [Reference.parse(args.image_refs[0])]
    elif (several := many_references(args)) is not None:
        if args.verify:
            raise UsageError("--verify checks one image", hint="run `soci-wrapper verify` for each image")
        if recorder is not None:
            raise UsageError(
                "--record-prefetch records the start of one image, and several are given",
                hint="index each image with a run of its own, or record each with `soci-wrapper startup "
                "--record FILE` and pass FILE with --prefetch-files-json",
            )
        references, many = several, True
    else:
        if args.max_concurrent_images is not None:
            raise UsageError("--max-concurrent-images goes with several images")
        references = [index_reference(args)]
    requests = tuple(index_request(args, ref, settings) for ref in references)
    if recorder is not None:
        _check_recording_platform(requests[0].pull)
    return IndexJob(
        requests,
        registry_options(args, stdin),
        daemon_options(args),
        many=many,
        from_oci=args.from_oci,
        verify=bool(args.verify),
        max_concurrent_images=args.max_concurrent_images,
        recorder=recorder,
    )


def _check_recording_platform(pull: PullOptions) -> None:
    """--record-prefetch starts the image here: --platform must name this machine's (checked again, against the
    image's platforms, once it is resolved)."""
    host = Platform.host()
    if pull.platforms and not any(host.matches(p) for p in pull.platforms):
        chosen = ", ".join(str(p) for p in pull.platforms)
        raise UsageError(
            f"--record-prefetch starts the image on this machine ({host}), and --platform {chosen} does not "
            "include it",
            hint=f"add --platform {host}, or record with `soci-wrapper startup --record FILE` on a machine of "
            "that platform and pass FILE with --prefetch-files-json",
        )


@dataclass(frozen=True)
class IndexSettings:
    """What every image of one ``index`` run is given alike, read once."""

    soci_version: SociVersion = "V1"
    output_tag: str | None = None
    prefetch_files: tuple[str, ...] = ()


def _index_settings(args: argparse.Namespace, warn: Warn) -> IndexSettings:
    """--soci-version (SOCI_WRAPPER_SOCI_VERSION), --output-tag (SOCI_WRAPPER_OUTPUT_TAG: V2 only, dropped with
    a warning for V1) and the prefetch list (its file read now: bad input exits 2 before any work)."""
    version = args.soci_version or (env("SOCI_WRAPPER_SOCI_VERSION") or "V1").upper()
    if version not in ("V1", "V2"):
        raise UsageError(f"invalid SOCI version {version!r}", hint="use V1 or V2")
    soci_version: SociVersion = "V2" if version == "V2" else "V1"
    output_tag: str | None = args.output_tag or env("SOCI_WRAPPER_OUTPUT_TAG")
    prefetch = prefetch_list(args.prefetch_file, args.prefetch_files_json)
    if soci_version == "V1" and output_tag:
        warn("--output-tag is ignored for SOCI index manifest v1")
        output_tag = None
    return IndexSettings(soci_version, output_tag, prefetch)


def index_request(args: argparse.Namespace, reference: Reference, settings: IndexSettings) -> IndexRequest:
    """One image's request, with the options of the command line."""
    output_tag = settings.output_tag
    if output_tag:
        try:
            reference.with_tag(output_tag)  # checked now, not after the pull
        except UsageError as exc:
            raise UsageError(f"invalid --output-tag {output_tag!r}", hint=exc.hint) from None
    return IndexRequest(
        reference=reference,
        soci_version=settings.soci_version,
        output_tag=output_tag,
        pull=pull_options(args),
        span_size=args.span_size,
        force=args.force,
        soci_bin=args.soci_bin,
        soci_timeout=args.soci_timeout,
        debug=args.debug,
        reuse=reuse_options(args, reference),
        overlap=args.overlap,
        prefetch_files=settings.prefetch_files,
        prefetch_max_files=args.prefetch_max_files,
    )


def reuse_options(args: argparse.Namespace, reference: Reference) -> ReuseOptions:
    cache_dir = args.cache_dir or (Path(text) if (text := env("SOCI_WRAPPER_CACHE_DIR")) else None)
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


def many_references(args: argparse.Namespace) -> list[Reference] | None:
    """The images of a many-image run (several IMAGE_REFs, or --from-file), or None for one image."""
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
    refs: list[Reference] = []
    for text in texts:
        ref = Reference.parse(text)
        if ref not in refs:
            refs.append(ref)
    return refs


# -- verify --------------------------------------------------------------------------------------------------
def verify_request(args: argparse.Namespace) -> VerifyRequest:
    from wrapper.verify.run import VerifyRequest

    platforms, all_platforms = platform_selection(args)
    if platforms and all_platforms:
        raise UsageError("--platform and --all-platforms exclude each other", hint="pick one")
    if args.files_per_layer < 0:
        raise UsageError("--files-per-layer must be 0 or more")
    if args.soci_timeout <= 0:
        raise UsageError("--soci-timeout must be a positive number of seconds")
    version: SociVersionChoice = (
        "V1" if args.soci_version == "V1" else "V2" if args.soci_version == "V2" else "auto"
    )
    return VerifyRequest(
        reference=image_reference(args, args.image_ref),
        platforms=platforms,
        all_platforms=all_platforms,
        soci_version=version,
        level=args.level,
        soci_bin=args.soci_bin,
        snapshotter_bin=args.snapshotter_bin,
        soci_timeout=args.soci_timeout,
        files_per_layer=args.files_per_layer,
        debug=bool(args.debug),
    )


def verify_after_index(request: IndexRequest, report: IndexReport) -> VerifyRequest | None:
    """``index --verify``: what to check of what the run indexed (V2: the SOCI-enabled image at --output-tag);
    None when there is nothing to check (a reference to soci-wrapper's own output)."""
    from wrapper.verify.run import VerifyRequest

    if report.status == "not-an-image" or not report.indexes:
        return None
    ref = request.reference
    if request.soci_version == "V2":
        assert request.output_tag
        ref = Reference(ref.registry, ref.repository, tag=request.output_tag)
    return VerifyRequest(
        reference=ref,
        platforms=tuple(Platform.parse(i.platform) for i in report.indexes),
        soci_version=request.soci_version,
        soci_bin=request.soci_bin,
        debug=request.debug,
    )

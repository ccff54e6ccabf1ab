"""soci-wrapper as a Python library: the same runs as the command line, called in-process, typed.

Everything a caller needs is importable from this module, and ``__all__`` is the public surface: names outside
it (the packages below ``wrapper``) may change between releases. A run, as with ``soci-wrapper index``::

    from wrapper.api import DaemonOptions, IndexRequest, NotFoundError, PullOptions, Reference, run_index

    request = IndexRequest(
        Reference.parse("registry.example.com/team/app:1.4"),  # or Reference.ecr(account, region, repo, ...)
        pull=PullOptions(min_layer_size=1 << 20),
    )
    daemon = DaemonOptions(containerd_address="/run/containerd/containerd.sock", namespace="ci")
    try:
        report = run_index(request, daemon=daemon)
    except NotFoundError as exc:  # exc.exit_code == 4, as the command line's
        ...
    for index in report.indexes:  # one per platform indexed
        print(index.platform, index.soci_index_digest, [layer.status for layer in index.layers])

Entry points (each takes the request first, then keyword arguments, all optional):

- ``run_index(request, *, registry=, daemon=, reporter=) -> IndexReport``: resolve, check for an existing
  index, pull what soci reads, run ``soci create`` (V1) or ``soci convert`` (V2), push. ``request`` is an
  ``IndexRequest``, or an image reference (text or ``Reference``) for the defaults (V1, this host's platform).
- ``run_index_many(requests, *, registry=, daemon=, reporter=, max_concurrent_images=2) -> BatchReport``: many
  images with one containerd; one failing image does not stop the others (its ``ImageResult`` carries the
  error's text and exit code).
- ``run_verify(request, *, registry=, daemon=, reporter=) -> VerifyReport``: check that an image's SOCI index
  serves lazy loading. The verdict is in the report (``status``, ``exit_code``, ``problems()``); it is not
  raised: ``if (error := report.error()) is not None: raise error`` raises ``NoSociIndexError`` (exit 10) or
  ``SociIndexInvalidError`` (exit 11).
- ``run_pull(reference, *, options=, registry=, daemon=, reporter=) -> PullResult``: only the pull, into
  containerd's content store (useful with ``DaemonOptions(containerd_address=...)``, or ``keep_work_dir``).
- ``run_startup(request, *, registry=, daemon=, reporter=) -> StartupReport``: start a container of the image
  and time it (``soci-wrapper startup``): lazily through soci-snapshotter-grpc, and/or from a full pull;
  ``StartupRequest(record=PATH)`` lists the files it opened before it was ready. Needs root, runc, and for the
  lazy start soci-snapshotter-grpc; always in a containerd of its own (``daemon.containerd_address`` is refused).
  A container that is not ready raises ``StartupError`` (exit 13).
- ``run_index(request, record_prefetch=StartupRecorder(...))``: ``index --record-prefetch``: a start of the
  image recorded first (from a full pull), its opened files added to the request's prefetch list, then the
  index made and pushed once; ``report.recorded`` says what was recorded.
- ``run_doctor(*, containerd_address=, containerd_bin=, soci_bin=) -> DoctorReport``: what would be used, and
  whether it works (``report.ok``).

Options: ``registry=RegistryOptions(...)`` says how to reach registries (credentials, CA, plain HTTP);
``daemon=DaemonOptions(...)`` where containerd comes from (default: a private containerd started for the call
and stopped after it, which needs root; ``containerd_address=`` attaches to a running one, never stopped, in
``namespace``) and where the run's files go. ``reporter`` receives progress (see ``Reporter``;
``PlainReporter()`` prints plain lines to stderr); without one, nothing is printed.

Programs: soci is ``IndexRequest.soci_bin`` / ``VerifyRequest.soci_bin`` when given (and then only that), else
``$SOCI_BIN``, else found where the command line looks (this Python's scripts directory, then ``PATH``);
containerd is ``DaemonOptions.containerd_bin`` (a path, or a name looked up on ``PATH``). ``run_doctor()``
says which ones a run would use. Nothing is looked up relative to a checkout, so an installed wheel behaves as
a checkout does. soci must be of the v0.15 series (``MissingDependencyError`` otherwise).

Errors: every failure the caller can cause or fix raises a ``WrapperError`` subclass, whose ``exit_code`` is
the command line's (``ExitCode``), ``str()`` one line, ``hint`` what to do, ``detail`` a daemon's or soci's
last lines: ``UsageError`` 2, ``AuthError`` 3, ``NotFoundError`` 4, ``RegistryError`` 5, ``ContainerdError``
6, ``SociError`` 7, ``NothingToIndexError`` 8 (a ``SociError``), ``MissingDependencyError`` 9,
``NoSociIndexError`` 10, ``SociIndexInvalidError`` 11. Anything else is a bug. Bad options fail when the
request is built (the dataclasses check themselves), before any work.

Lifetime: a call stops every process it started and removes its run directory before it returns or raises,
also on ``KeyboardInterrupt``. No signal handlers are installed (the command line's are its own): to unwind
on SIGTERM as on Ctrl-C, have your handler raise an exception in the main thread. For several images, one
``run_index_many`` call (one containerd, images side by side) is better than calls of your own in threads.
Logs go to the ``wrapper`` logger, with no handler of its own; with DEBUG logging on, keep ``urllib3`` and
``botocore`` at INFO (their debug lines carry tokens).

The names are here, and not in ``wrapper/__init__.py``, so that ``import wrapper`` (which the command line,
the scripts and ``__version__`` readers do) stays free of grpc, boto3 and the rest, and so that a type checker
sees each name's real type (``py.typed`` ships with the package) through one import path.
"""

from __future__ import annotations

from collections.abc import Iterable

from wrapper import __version__
from wrapper.cli.display import PlainReporter
from wrapper.cli.startup import start_image as _start_image
from wrapper.core.errors import (
    AuthError,
    ContainerdError,
    ExitCode,
    MissingDependencyError,
    NoSociIndexError,
    NotFoundError,
    NothingToIndexError,
    RegistryError,
    SociError,
    SociIndexInvalidError,
    StartupError,
    UsageError,
    WrapperError,
)
from wrapper.core.models import Platform
from wrapper.core.options import (
    DEFAULT_MIN_LAYER_SIZE,
    DaemonOptions,
    IndexRequest,
    Overlap,
    PullOptions,
    RegistryOptions,
    ReuseOptions,
    SociVersion,
)
from wrapper.core.progress import QuietReporter, Reporter
from wrapper.core.reference import Reference
from wrapper.core.report import IndexReport, LayerReport, PlatformIndex, PlatformSkipped, RecordedPrefetch
from wrapper.image.pull import PullResult
from wrapper.run import batch as _batch
from wrapper.run import pipeline as _pipeline
from wrapper.run.batch import DEFAULT_MAX_CONCURRENT_IMAGES, BatchReport, ImageResult
from wrapper.run.doctor import Check as DoctorCheck
from wrapper.run.doctor import DoctorReport, run_doctor
from wrapper.run.recording import PrefetchRecorder
from wrapper.startup.container import Readiness
from wrapper.startup.prefetch import StartupRecorder
from wrapper.startup.report import StartupReport, VariantReport
from wrapper.startup.run import StartupRequest
from wrapper.startup.spec import Limits
from wrapper.verify import run as _verify
from wrapper.verify.report import Check as VerifyCheck
from wrapper.verify.report import LayerResult, Level, PlatformResult, VerifyReport
from wrapper.verify.run import VerifyRequest

__all__ = [
    "DEFAULT_MAX_CONCURRENT_IMAGES",
    "DEFAULT_MIN_LAYER_SIZE",
    "AuthError",
    "BatchReport",
    "ContainerdError",
    "DaemonOptions",
    "DoctorCheck",
    "DoctorReport",
    "ExitCode",
    "ImageResult",
    "IndexReport",
    "IndexRequest",
    "LayerReport",
    "LayerResult",
    "Level",
    "Limits",
    "MissingDependencyError",
    "NoSociIndexError",
    "NotFoundError",
    "NothingToIndexError",
    "Overlap",
    "PlainReporter",
    "Platform",
    "PlatformIndex",
    "PlatformResult",
    "PlatformSkipped",
    "PrefetchRecorder",
    "PullOptions",
    "PullResult",
    "QuietReporter",
    "Readiness",
    "RecordedPrefetch",
    "Reference",
    "RegistryError",
    "RegistryOptions",
    "Reporter",
    "ReuseOptions",
    "SociError",
    "SociIndexInvalidError",
    "SociVersion",
    "StartupError",
    "StartupRecorder",
    "StartupReport",
    "StartupRequest",
    "UsageError",
    "VariantReport",
    "VerifyCheck",
    "VerifyReport",
    "VerifyRequest",
    "WrapperError",
    "__version__",
    "run_doctor",
    "run_index",
    "run_index_many",
    "run_pull",
    "run_startup",
    "run_verify",
]


def _reference(image: str | Reference) -> Reference:
    return image if isinstance(image, Reference) else Reference.parse(image)


def _index_request(request: IndexRequest | str | Reference) -> IndexRequest:
    return request if isinstance(request, IndexRequest) else IndexRequest(_reference(request))


def run_index(
    request: IndexRequest | str | Reference,
    *,
    registry: RegistryOptions | None = None,
    daemon: DaemonOptions | None = None,
    reporter: Reporter | None = None,
    record_prefetch: PrefetchRecorder | None = None,
) -> IndexReport:
    """Index one image and push its SOCI index (``soci-wrapper index IMAGE``).

    Returns the report (``status``: ``indexed``, ``already-indexed`` or ``not-an-image``; per platform the
    SOCI index digest and what happened to each layer). Raises a ``WrapperError`` subclass on failure.
    ``record_prefetch`` (a ``StartupRecorder``: the container's command, readiness, environment, limits):
    ``index --record-prefetch``, a start of the image recorded first for the prefetch list (root, runc).
    """
    return _pipeline.run_index(
        _index_request(request),
        registry or RegistryOptions(),
        daemon or DaemonOptions(),
        reporter,
        record_prefetch,
    )


def run_index_many(
    requests: Iterable[IndexRequest | str | Reference],
    *,
    registry: RegistryOptions | None = None,
    daemon: DaemonOptions | None = None,
    reporter: Reporter | None = None,
    max_concurrent_images: int = DEFAULT_MAX_CONCURRENT_IMAGES,
) -> BatchReport:
    """Index several images with one containerd, ``max_concurrent_images`` at a time
    (``soci-wrapper index REF REF ...``). soci is the first request's ``soci_bin``.

    An image that fails does not raise: its ``ImageResult`` has the ``exit_code`` and ``error``
    (``BatchReport.failed`` lists them). What stops the whole run (soci or containerd missing, no image given)
    raises.
    """
    wanted = [_index_request(r) for r in requests]
    if not wanted:
        raise UsageError("no image given", hint="pass at least one image reference or IndexRequest")
    return _batch.run_index_many(
        wanted,
        registry or RegistryOptions(),
        daemon or DaemonOptions(),
        reporter,
        max_concurrent_images=max_concurrent_images,
    )


def run_verify(
    request: VerifyRequest | str | Reference,
    *,
    registry: RegistryOptions | None = None,
    daemon: DaemonOptions | None = None,
    reporter: Reporter | None = None,
) -> VerifyReport:
    """Check that an image's SOCI index serves lazy loading (``soci-wrapper verify IMAGE``), at the levels
    ``request.level`` asks for (default: the deepest this machine supports; ``report.levels`` says which ran).

    An index that is missing or invalid is the report's verdict, not an exception: see ``report.status``,
    ``report.exit_code`` and ``report.error()``. Failures to check at all (registry, containerd, soci) raise.
    """
    wanted = request if isinstance(request, VerifyRequest) else VerifyRequest(_reference(request))
    return _verify.run_verify(wanted, registry or RegistryOptions(), daemon or DaemonOptions(), reporter)


def run_pull(
    reference: str | Reference,
    *,
    options: PullOptions | None = None,
    registry: RegistryOptions | None = None,
    daemon: DaemonOptions | None = None,
    reporter: Reporter | None = None,
) -> PullResult:
    """Pull an image into containerd's content store, as soci would read it (``soci-wrapper pull IMAGE``):
    only the layers of at least ``options.min_layer_size`` unless ``options.full``; nothing is unpacked."""
    return _pipeline.run_pull(
        _reference(reference),
        options or PullOptions(),
        registry or RegistryOptions(),
        daemon or DaemonOptions(),
        reporter,
    )


def run_startup(
    request: StartupRequest | str | Reference,
    *,
    registry: RegistryOptions | None = None,
    daemon: DaemonOptions | None = None,
    reporter: Reporter | None = None,
) -> StartupReport:
    """Start a container of the image and time it (``soci-wrapper startup IMAGE``): per variant the time to
    pull, to ready and in all, the bytes fetched; with ``baseline=True`` both variants and a verdict
    (``report.lazy_loses``); with ``record=PATH`` the files opened before ready (``report.recorded``).

    Raises ``StartupError`` (exit 13) when the container is not ready (it exited first, or ``readiness.timeout``
    passed), and the other ``WrapperError`` types as the command line would. Everything started is stopped.
    """
    wanted = request if isinstance(request, StartupRequest) else StartupRequest(_reference(request))
    return _start_image(
        wanted, registry or RegistryOptions(), daemon or DaemonOptions(), reporter or QuietReporter()
    )

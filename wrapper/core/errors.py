"""Exception types that carry a user-facing message and a documented exit code.

Every failure the user can cause or fix is one of these. The CLI prints ``str(error)`` as one line
(plus the hint, if any) and exits with ``error.exit_code``; ``--debug`` adds the traceback.
"""

from __future__ import annotations


class ExitCode:
    """Documented exit codes (README, ``--help``)."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    REGISTRY = 5
    CONTAINERD = 6
    SOCI = 7
    NOTHING_TO_INDEX = 8
    MISSING_DEPENDENCY = 9
    NO_SOCI_INDEX = 10  # verify: a checked platform has no SOCI index
    SOCI_INDEX_INVALID = 11  # verify: a SOCI index exists but fails a check
    SOME_FAILED = 12  # several images in one run: at least one failed
    NOT_READY = 13  # startup: the container exited with an error or was not ready in time
    INTERRUPTED = 130


class WrapperError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code: int = ExitCode.UNEXPECTED

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Extra diagnostic text (a daemon's log tail, a command's stderr); shown under the message.
        self.detail = detail

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(WrapperError):
    """Bad input: an invalid reference, digest, flag combination or value."""

    exit_code = ExitCode.USAGE


class AuthError(WrapperError):
    """The registry (or AWS) refused the credentials, or none could be found."""

    exit_code = ExitCode.AUTH


class NotFoundError(WrapperError):
    """A repository, tag, manifest, blob or platform does not exist."""

    exit_code = ExitCode.NOT_FOUND


class RegistryError(WrapperError):
    """The registry is unreachable, answered with an error, or spoke something we do not accept."""

    exit_code = ExitCode.REGISTRY


class ContainerdError(WrapperError):
    """containerd could not be started, reached, or refused a request."""

    exit_code = ExitCode.CONTAINERD


class SociError(WrapperError):
    """The soci binary failed. ``transient``: for a reason another attempt may not meet (5xx, reset)."""

    exit_code = ExitCode.SOCI
    transient = False


class NothingToIndexError(SociError):
    """No layer of the image is large enough to get a zTOC."""

    exit_code = ExitCode.NOTHING_TO_INDEX


class MissingDependencyError(WrapperError):
    """A required program (containerd, soci, ...) is not installed or not usable."""

    exit_code = ExitCode.MISSING_DEPENDENCY


class NoSociIndexError(WrapperError):
    """verify: a platform that was checked has no SOCI index the snapshotter would find."""

    exit_code = ExitCode.NO_SOCI_INDEX


class SociIndexInvalidError(WrapperError):
    """verify: a SOCI index exists but is wrong (discovery, structure, zTOCs, content or lazy loading)."""

    exit_code = ExitCode.SOCI_INDEX_INVALID


class StartupError(WrapperError):
    """startup: the container failed (non-zero exit, killed) or did not become ready within the timeout."""

    exit_code = ExitCode.NOT_READY

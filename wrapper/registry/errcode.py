"""Error decoding: a registry's error answer, or a failed connection, as the project's exception types.

A distribution error body (``{"errors": [{"code": ..., "message": ...}]}``) becomes ``CODE: message``; a
status becomes NotFoundError (404), AuthError (401/403) or RegistryError; a failure worth another try (a
connection error, a timeout, 429, 5xx) is a ``Transient``, which only the transport's retry loop sees.
"""

from __future__ import annotations

import http.client
import json
import re
import socket

from wrapper.core.errors import AuthError, NotFoundError, RegistryError, WrapperError
from wrapper.core.util import one_line
from wrapper.registry.auth import SOURCE_ECR, SOURCE_ECR_PUBLIC, SOURCE_EXPLICIT, Credentials

# How much of an error answer is read to explain it.
MAX_ERROR_BODY = 64 << 10
# What HTTPS servers answer a plain-HTTP request with (Go's net/http, as in distribution; nginx).
_PLAIN_HTTP_TO_HTTPS_RE = re.compile(
    rb"HTTP request to an HTTPS server|plain HTTP request was sent to HTTPS port", re.IGNORECASE
)


class BlobReadError(RegistryError):
    """The connection broke while a blob was streamed; ``position`` is the offset reached, to resume from."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class SourceMismatchError(RegistryError):
    """The bytes given for an upload are not the blob's: another size or another digest. Nothing of it was
    made visible; the fault is the source's (``detail`` says how), not the registry's."""

    def __init__(self, digest: str, problem: str) -> None:
        super().__init__(f"blob {digest}: {problem}; not uploaded")
        self.digest = digest
        self.problem = problem


class Transient(Exception):
    """A failure worth retrying: connection error, timeout, 429, 5xx. ``retry_after``: the delay the
    registry asked for. ``refused``: the connection itself was refused (nothing listens there)."""

    def __init__(self, reason: str, retry_after: float | None = None, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.refused = refused


def error_summary(data: bytes) -> str:
    """``CODE: message`` from a distribution error body, else a short text excerpt."""
    if not data:
        return ""
    try:
        doc = json.loads(data)
    except ValueError:
        text = one_line(data[:200].decode(errors="replace"))
        return text if text and "<" not in text[:1] else ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code, message = str(first.get("code", "")), one_line(first.get("message", ""))
        return ": ".join(p for p in (code, message) if p)[:300]
    if isinstance(doc, dict) and doc.get("message"):
        return one_line(doc["message"])[:300]
    return ""


def detail_suffix(data: bytes) -> str:
    """``": CODE: message"`` for an error body that says something, else nothing."""
    detail = error_summary(data)
    return f": {detail}" if detail else ""


def status_error(
    status: int, data: bytes, *, method: str, registry: str, what: str, credentials: Credentials | None
) -> WrapperError:
    """The exception for a final (not retried) error status; ``data`` is the start of its body and
    ``credentials`` those sent to ``registry`` (named when a 401 rejects them)."""
    suffix = detail_suffix(data)
    if status == 400 and _PLAIN_HTTP_TO_HTTPS_RE.search(data):
        return RegistryError(
            f"{registry} speaks HTTPS, but was sent plain HTTP (HTTP 400{suffix})",
            hint="loopback registries, and any registry with --plain-http, are reached over plain HTTP; "
            "pass --ca-file with the CA of its certificate",
        )
    if status == 404:
        return NotFoundError(f"{what} not found on {registry}{suffix}", hint=not_found_hint(what, method))
    if status == 401:
        if credentials is not None and not credentials.is_identity_token:
            return AuthError(
                f"authentication to {registry} failed: credentials for user {credentials.username!r} "
                f"were rejected (HTTP 401{suffix})",
                hint=rejected_hint(credentials, registry),
            )
        return AuthError(
            f"authentication to {registry} failed: access to {what} denied (HTTP 401{suffix})",
            hint=f"log in with docker login {registry}, or pass --username and --password-stdin; "
            "check the repository name too (some registries deny what does not exist)",
        )
    if status == 403:
        return AuthError(
            f"authentication to {registry} failed: access to {what} forbidden (HTTP 403{suffix})",
            hint="check that these credentials may "
            + ("push to" if method in ("POST", "PUT", "PATCH", "DELETE") else "pull from")
            + " this repository",
        )
    return RegistryError(f"{registry} refused {method} for {what}: HTTP {status}{suffix}")


def not_found_hint(what: str, method: str = "GET") -> str:
    """What to do when ``what`` (``manifest REF``, ``blob DIGEST ...``, ``upload of ...``) is not found."""
    if what.startswith("upload ") or method in ("POST", "PUT", "PATCH"):
        return "check the repository name; some registries (ECR) need the repository created first"
    if what.startswith("manifest "):
        named = "digest" if "@sha256:" in what else "tag"
        return f"check the repository and {named}, and that you can pull it"
    if what.startswith("blob "):
        return "the image refers to a blob the registry does not hold; push the image again"
    return "check the repository name, and that you can pull it"


def rejected_hint(credentials: Credentials, registry: str) -> str:
    """What to do when ``registry`` rejects ``credentials`` (by where they came from)."""
    source = credentials.source
    if source == SOURCE_EXPLICIT:
        return "check the username and the password piped to --password-stdin"
    if source.startswith("docker-credential-"):
        return (
            f"log in again with docker login {registry} (the password comes from {source}), or pass "
            "--username and --password-stdin"
        )
    if source in (SOURCE_ECR, SOURCE_ECR_PUBLIC):
        return "check the AWS credentials and that they may pull from this repository"
    return f"log in again with docker login {registry}, or pass --username and --password-stdin"


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or anything in its chain of causes is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
    return False


def connection_problem(exc: BaseException) -> str:
    """A few words for a connection failure (the full text is logged with --debug)."""
    for kind, words in (
        (ConnectionRefusedError, "connection refused"),
        (ConnectionResetError, "connection reset"),
        (TimeoutError, "timed out"),
        (socket.gaierror, "unknown host name"),
        (http.client.IncompleteRead, "connection closed before the end of the body"),
    ):
        if caused_by(exc, kind):
            return words
    if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return one_line(exc)[:120]

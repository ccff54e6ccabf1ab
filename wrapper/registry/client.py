"""A client for the OCI distribution API (any registry: distribution, ECR, Docker Hub, GHCR, ...).

Every HTTP request goes through ``RegistryClient._request``, which does authentication (Bearer token
and Basic), retries of transient failures, redirects (never forwarding ``Authorization`` to another
host) and the mapping of HTTP errors to the project's exception types.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import urllib3
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import SSLError as Urllib3SSLError

from wrapper import __version__
from wrapper.errors import AuthError, NotFoundError, RegistryError, WrapperError
from wrapper.models import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_TYPES,
    Descriptor,
    validate_digest,
)
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.reference import DOCKER_HUB, Reference
from wrapper.util import one_line, rechunk

log = logging.getLogger("wrapper.registry")

READ_CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 4 << 20
_MAX_ERROR_BODY = 64 << 10
_MAX_TOKEN_BODY = 1 << 20
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
_DOCKER_HUB_API = "registry-1.docker.io"
_LOOPBACK_RE = re.compile(r"^(?:localhost|127(?:\.[0-9]{1,3}){3}|\[::1\]|::1)$")
_CHALLENGE_PARAM_RE = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_SCHEMA1_MESSAGE = (
    "{ref} uses Docker schema 1, which is not supported; rebuild/push it with a current Docker or buildx"
)


class BlobReadError(RegistryError):
    """The connection broke while a blob was streamed; ``position`` is the offset reached, to resume from."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class _Transient(Exception):
    """A failure worth retrying: connection error, timeout, 429, 5xx. ``refused``: the connection itself was
    refused (nothing listens there)."""

    def __init__(self, reason: str, retry_after: float | None = None, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.refused = refused


# A registry that refuses connections and has not answered once in this run is given up on after about this
# long: nothing listens there, and waiting longer only delays the error. 5xx and resets keep the full budget.
REFUSED_BUDGET_SECONDS = 3.0
_REFUSED_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry served it."""

    descriptor: Descriptor
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise RegistryError(f"manifest {self.descriptor.digest} is not a JSON object")
        return data


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "bearer" or "basic"
    params: Mapping[str, str]


@dataclass
class _Token:
    value: str
    expires_at: float


class BlobStream:
    """A blob being downloaded: iterate for ``bytes`` chunks (at most 1 MiB each); close when done.

    ``size`` is the total blob size when the registry said it, ``position`` the absolute offset of the
    next byte. A broken connection raises BlobReadError carrying ``position``; reopen with that offset.
    """

    def __init__(
        self,
        response: urllib3.BaseHTTPResponse | None,
        *,
        size: int | None,
        offset: int,
        skip: int,
        label: str,
    ) -> None:
        self._response = response
        self.size = size
        self.position = offset
        self._skip = skip
        self._label = label
        self._done = response is None

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        if self._response is None:
            return
        response = self._response
        try:
            while True:
                try:
                    data = response.read(READ_CHUNK)
                except (Urllib3HTTPError, OSError) as exc:
                    raise BlobReadError(
                        f"connection lost while reading {self._label} at byte {self.position}: "
                        f"{one_line(exc)}",
                        position=self.position,
                    ) from None
                if not data:
                    break
                if self._skip:
                    # The registry ignored our Range header: drop the bytes we already have.
                    dropped = min(self._skip, len(data))
                    self._skip -= dropped
                    data = data[dropped:]
                    if not data:
                        continue
                self.position += len(data)
                yield data
            if self.size is not None and self.position < self.size:
                raise BlobReadError(
                    f"{self._label} ended at byte {self.position} of {self.size}", position=self.position
                )
            self._done = True
        finally:
            self.close()

    def close(self) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        if not self._done:
            # Do not drain a large unread body into a pooled connection: drop the connection.
            response.close()
        response.release_conn()


class RegistryClient:
    """Speaks the distribution API to any registry; safe to use from several threads at once.

    Scheme: ``https`` everywhere, except plain ``http`` when ``plain_http`` is set, or for loopback
    hosts (``localhost``, ``127.x.x.x``, ``::1``) when no ``ca_file`` is given. With a ``ca_file``
    loopback hosts use https too (verified against that CA). ``endpoint_overrides`` maps a registry host
    (``host[:port]``) to an ``ip:port`` to connect to, keeping the original name for the Host header,
    SNI and certificate verification.

    Retries: connection errors, timeouts, 429 (honouring ``Retry-After``) and 5xx are retried with
    exponential backoff and jitter, at most ``max_attempts`` times and ``max_retry_seconds`` in all.
    """

    def __init__(
        self,
        credentials: CredentialStore,
        *,
        ca_file: str | None = None,
        plain_http: bool = False,
        endpoint_overrides: Mapping[str, str] | None = None,
        max_attempts: int = 6,
        user_agent: str = f"soci-wrapper/{__version__}",
        backoff_seconds: float = 0.5,
        max_retry_seconds: float = 300.0,
        connect_timeout: float = 15.0,
        read_timeout: float = 120.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._credentials = credentials
        self._ca_file = ca_file
        self._plain_http = plain_http
        self._overrides = {k.lower(): v for k, v in (endpoint_overrides or {}).items()}
        self._max_attempts = max_attempts
        self._user_agent = user_agent
        self._backoff = backoff_seconds
        self._max_retry_seconds = max_retry_seconds
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool = urllib3.PoolManager(
            num_pools=32,
            maxsize=16,
            block=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file,
        )
        self._lock = threading.Lock()
        self._challenges: dict[str, _Challenge] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._answered: set[str] = set()  # registries that sent at least one HTTP response in this run

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._pool.clear()

    @property
    def credentials(self) -> CredentialStore:
        return self._credentials

    @property
    def ca_file(self) -> str | None:
        return self._ca_file

    # URLs ---------------------------------------------------------------------------------------------
    def base_url(self, registry: str) -> str:
        """``scheme://host`` for the API of ``registry`` (Docker Hub's API lives on registry-1.docker.io)."""
        host = _DOCKER_HUB_API if registry == DOCKER_HUB else registry
        return f"{self.scheme(registry)}://{host}"

    def scheme(self, registry: str) -> str:
        """``http`` or ``https`` for ``registry`` (see the class docstring)."""
        if self._plain_http:
            return "http"
        hostname = _split_host(registry)[0]
        if _LOOPBACK_RE.match(hostname) and self._ca_file is None:
            return "http"
        return "https"

    def _url(self, ref: Reference, tail: str) -> str:
        return f"{self.base_url(ref.registry)}/v2/{ref.repository}/{tail}"

    # Public API ---------------------------------------------------------------------------------------
    def get_manifest(self, ref: Reference, reference: str | None = None) -> Manifest:
        """Fetch a manifest or index by tag or digest (default: ``ref.reference``)."""
        reference = reference or ref.reference
        target = _with_reference(ref, reference)
        response, body = self._get_small(
            self._url(ref, f"manifests/{reference}"),
            ref=ref,
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
            what=f"manifest {target}",
        )
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"manifest {target} is over the 4 MiB limit")
        content_type = _media_type(response.headers.get("Content-Type"))
        media_type = self._manifest_media_type(target, content_type, body)
        digest = _sha256(body)
        header_digest = response.headers.get("Docker-Content-Digest")
        if header_digest and header_digest != digest:
            raise RegistryError(
                f"{ref.registry} sent manifest {target} with digest {digest}, "
                f"but Docker-Content-Digest says {header_digest}"
            )
        if reference.startswith("sha256:") and reference != digest:
            raise RegistryError(f"{ref.registry} sent a manifest with digest {digest} for {target}")
        return Manifest(Descriptor(media_type, digest, len(body)), body)

    def head_manifest(self, ref: Reference, reference: str | None = None) -> Descriptor | None:
        """The descriptor of a manifest (None if it does not exist), without downloading it if possible."""
        reference = reference or ref.reference
        target = _with_reference(ref, reference)
        response = self._request(
            "HEAD",
            self._url(ref, f"manifests/{reference}"),
            ref=ref,
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
            allow=(404,),
            what=f"manifest {target}",
        )
        _discard(response)
        if response.status == 404:
            return None
        content_type = _media_type(response.headers.get("Content-Type"))
        if content_type in SCHEMA1_TYPES:
            raise RegistryError(_SCHEMA1_MESSAGE.format(ref=target))
        digest = response.headers.get("Docker-Content-Digest")
        length = response.headers.get("Content-Length")
        if (
            not digest
            or not length
            or not length.isdigit()
            or content_type in _GENERIC_CONTENT_TYPES
            or (reference.startswith("sha256:") and digest != reference)
        ):
            return self.get_manifest(ref, reference).descriptor
        return Descriptor(content_type, validate_digest(digest), int(length))

    def open_blob(self, ref: Reference, digest: str, *, offset: int = 0) -> BlobStream:
        """Start streaming blob ``digest`` from byte ``offset`` (a Range request when offset > 0)."""
        validate_digest(digest)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        headers = {"Accept": "*/*"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        label = f"blob {digest} of {ref.registry}/{ref.repository}"
        response = self._request(
            "GET",
            self._url(ref, f"blobs/{digest}"),
            ref=ref,
            headers=headers,
            allow=(416,),
            what=label,
        )
        content_range = response.headers.get("Content-Range", "")
        length = response.headers.get("Content-Length")
        if response.status == 416:
            _discard(response)
            total = _range_total(content_range)
            if total is not None and offset >= total:
                return BlobStream(None, size=total, offset=offset, skip=0, label=label)
            raise RegistryError(f"{ref.registry} refused the range {offset}- of {label}")
        if response.status == 206:
            match = re.match(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$", content_range.strip())
            if not match or int(match.group(1)) != offset:
                response.close()
                response.release_conn()
                raise RegistryError(
                    f"{ref.registry} answered a range request for {label} "
                    f"with Content-Range {content_range!r}"
                )
            size = int(match.group(3)) if match.group(3) != "*" else None
            return BlobStream(response, size=size, offset=offset, skip=0, label=label)
        size = int(length) if length and length.isdigit() else None
        if offset:
            log.debug("%s ignored the Range header; skipping %d bytes", ref.registry, offset)
        return BlobStream(response, size=size, offset=offset, skip=offset, label=label)

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        validate_digest(digest)
        response = self._request(
            "HEAD",
            self._url(ref, f"blobs/{digest}"),
            ref=ref,
            allow=(404,),
            what=f"blob {digest}",
        )
        _discard(response)
        return response.status != 404

    def push_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Callable[[], Iterable[bytes]],
        *,
        chunk_size: int | None = None,
    ) -> bool:
        """Upload a blob unless the repository has it already (then return False).

        ``source()`` yields the blob's bytes; it is called again when the upload restarts after a
        transient failure. ``chunk_size`` None: one monolithic PUT streaming the body; otherwise PATCH
        requests of ``chunk_size`` bytes (one chunk is held in memory), then the closing PUT.
        """
        validate_digest(descriptor.digest)
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.blob_exists(ref, descriptor.digest):
            log.debug("blob %s already in %s/%s", descriptor.digest, ref.registry, ref.repository)
            return False
        retrying = self._retrying(ref.registry)
        try:
            for attempt in retrying:
                with attempt:
                    self._upload_once(ref, descriptor, source, chunk_size)
        except _Transient as exc:
            reason = f"upload of blob {descriptor.digest} failed: {exc.reason}"
            raise self._gave_up(retrying, ref.registry, reason) from None
        return True

    def put_manifest(self, ref: Reference, reference: str, body: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or its digest; returns its digest."""
        digest = _sha256(body)
        if reference.startswith("sha256:") and reference != digest:
            raise ValueError(f"manifest body has digest {digest}, not {reference}")
        response = self._request(
            "PUT",
            self._url(ref, f"manifests/{reference}"),
            ref=ref,
            push=True,
            headers={"Content-Type": media_type},
            body=body,
            what=f"manifest {_with_reference(ref, reference)}",
        )
        _discard(response)
        returned = response.headers.get("Docker-Content-Digest")
        if returned and media_type in SCHEMA1_TYPES:
            # A signed schema 1 manifest's digest covers the payload without its signatures.
            return validate_digest(returned)
        if returned and returned != digest:
            raise RegistryError(f"{ref.registry} stored manifest {digest} as {returned}")
        return digest

    def get_referrers(
        self, ref: Reference, subject_digest: str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Descriptors of the manifests whose ``subject`` is ``subject_digest``.

        Uses the referrers API; where the registry has none (404), the referrers tag ``sha256-<hex>``.
        """
        validate_digest(subject_digest)
        url = self._url(ref, f"referrers/{subject_digest}")
        if artifact_type:
            url += "?" + urlencode({"artifactType": artifact_type})
        response, body = self._get_small(
            url, ref=ref, headers={"Accept": OCI_INDEX}, allow=(404,), what=f"referrers of {subject_digest}"
        )
        if response.status == 404:
            tag = "sha256-" + subject_digest.split(":", 1)[1]
            log.debug("%s has no referrers API; reading the tag %s", ref.registry, tag)
            try:
                index = self.get_manifest(ref, tag)
            except NotFoundError:
                return []
            data = index.json()
        else:
            if len(body) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"referrers list of {subject_digest} is over the 4 MiB limit")
            try:
                data = json.loads(body)
            except ValueError:
                raise RegistryError(f"{ref.registry} sent an unreadable referrers list") from None
        manifests = data.get("manifests") if isinstance(data, dict) else None
        if not isinstance(manifests, list):
            return []
        out = [Descriptor.from_oci(m) for m in manifests if isinstance(m, dict) and "digest" in m]
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    # Upload -------------------------------------------------------------------------------------------
    def _upload_once(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Callable[[], Iterable[bytes]],
        chunk_size: int | None,
    ) -> None:
        label = f"blob {descriptor.digest}"
        start = self._request(
            "POST",
            self._url(ref, "blobs/uploads/"),
            ref=ref,
            push=True,
            headers={"Content-Length": "0"},
            body=b"",
            retry=False,
            what=f"upload of {label}",
        )
        _discard(start)
        location = self._location(ref, start)
        if chunk_size is None:
            response = self._request(
                "PUT",
                _add_query(location, {"digest": descriptor.digest}),
                ref=ref,
                push=True,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(descriptor.size)},
                body=lambda: _exact_size(source(), descriptor),
                retry=False,
                what=f"upload of {label}",
            )
        else:
            offset = 0
            for chunk in rechunk(_exact_size(source(), descriptor), chunk_size):
                patch = self._request(
                    "PATCH",
                    location,
                    ref=ref,
                    push=True,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(len(chunk)),
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                    body=chunk,
                    retry=False,
                    what=f"upload of {label}",
                )
                _discard(patch)
                offset += len(chunk)
                location = self._location(ref, patch)
            response = self._request(
                "PUT",
                _add_query(location, {"digest": descriptor.digest}),
                ref=ref,
                push=True,
                headers={"Content-Length": "0"},
                body=b"",
                retry=False,
                what=f"upload of {label}",
            )
        _discard(response)
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != descriptor.digest:
            raise RegistryError(f"{ref.registry} stored {label} as {returned}")

    def _location(self, ref: Reference, response: urllib3.BaseHTTPResponse) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{ref.registry} started a blob upload without a Location header")
        return urljoin(self.base_url(ref.registry) + "/", location)

    # The choke point ----------------------------------------------------------------------------------
    def _retrying(self, registry: str) -> Retrying:
        def never_answered_and_refused(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            return isinstance(exc, _Transient) and exc.refused and registry not in self._answered

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if never_answered_and_refused(state):
                return _REFUSED_WAIT_SECONDS
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(exc.retry_after, 60.0)
            return float(wait_random_exponential(multiplier=self._backoff, max=30.0)(state))

        class StopRefused(stop_base):
            def __call__(self, retry_state: RetryCallState) -> bool:
                elapsed = retry_state.seconds_since_start or 0.0
                budget_spent = elapsed + _REFUSED_WAIT_SECONDS >= REFUSED_BUDGET_SECONDS
                return budget_spent and never_answered_and_refused(retry_state)

        def before_sleep(state: RetryCallState) -> None:
            # One short line per retry; every request and the full error are logged with --debug.
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s; retrying in %.1f s", exc, delay)

        return Retrying(
            stop=stop_any(
                stop_after_attempt(self._max_attempts),
                stop_after_delay(self._max_retry_seconds),
                StopRefused(),
            ),
            wait=wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    @staticmethod
    def _gave_up(retrying: Retrying, registry: str, reason: str) -> RegistryError:
        """The error after the last attempt, saying how many attempts were made over how long."""
        message = reason if registry in reason else f"{registry}: {reason}"
        attempts = int(retrying.statistics.get("attempt_number", 1))
        started = retrying.statistics.get("start_time")
        took = f" over {time.monotonic() - started:.1f} s" if isinstance(started, float) else ""
        if attempts == 1:
            return RegistryError(message)
        return RegistryError(f"{message} (gave up after {attempts} attempts{took})")

    def _get_small(
        self, url: str, *, ref: Reference, what: str, headers: Mapping[str, str], allow: Container[int] = ()
    ) -> tuple[urllib3.BaseHTTPResponse, bytes]:
        """GET a small document (a manifest, a referrers list), reading its body inside the retry loop so
        that a connection lost mid-body is retried like one lost before the headers. At most 4 MiB + 1 byte
        is read (callers check the limit); a larger declared Content-Length is refused at once."""
        retrying = self._retrying(ref.registry)
        try:
            for attempt in retrying:
                with attempt:
                    response = self._request(
                        "GET", url, ref=ref, what=what, headers=headers, allow=allow, retry=False
                    )
                    try:
                        declared = response.headers.get("Content-Length")
                        if declared is not None and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                            raise RegistryError(f"{what} is {declared} bytes, over the 4 MiB limit")
                        return response, _read_limited(response, MAX_MANIFEST_BYTES + 1)
                    finally:
                        _discard(response)
        except _Transient as exc:
            raise self._gave_up(retrying, ref.registry, exc.reason) from None
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _request(
        self,
        method: str,
        url: str,
        *,
        ref: Reference,
        what: str,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        body: bytes | Callable[[], Iterable[bytes]] | None = None,
        allow: Container[int] = (),
        retry: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request (with auth, redirects and retries) and return the response, body unread.

        2xx answers and statuses in ``allow`` are returned (the caller releases the connection); other
        statuses raise NotFoundError (404), AuthError (401/403) or RegistryError.
        """
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        retrying = self._retrying(ref.registry)
        try:
            if retry:
                response: urllib3.BaseHTTPResponse | None = None
                for attempt in retrying:
                    with attempt:
                        response = self._attempt(method, url, ref.registry, scope, headers, body)
                assert response is not None
            else:
                response = self._attempt(method, url, ref.registry, scope, headers, body)
        except _Transient as exc:
            if not retry:
                raise
            raise self._gave_up(retrying, ref.registry, exc.reason) from None
        if 200 <= response.status < 300 or response.status in allow:
            return response
        raise self._error(response, method, ref.registry, what)

    def _attempt(
        self,
        method: str,
        url: str,
        registry: str,
        scope: str,
        headers: Mapping[str, str] | None,
        body: bytes | Callable[[], Iterable[bytes]] | None,
    ) -> urllib3.BaseHTTPResponse:
        api_netloc = urlsplit(self.base_url(registry)).netloc.lower()
        reauthenticated = False
        redirects = 0
        while True:
            netloc = urlsplit(url).netloc.lower()
            same_host = netloc == api_netloc
            send_headers = {"User-Agent": self._user_agent, **(headers or {})}
            authorization = self._authorization(registry, scope) if same_host else None
            if authorization:
                send_headers["Authorization"] = authorization
            payload = body() if callable(body) else body
            response = self._send(method, url, send_headers, payload)
            self._answered.add(registry)
            status = response.status
            log.debug("%s %s -> %d", method, _redact_url(url), status)
            if status in _REDIRECT_STATUSES and response.headers.get("Location"):
                _discard(response)
                if method not in ("GET", "HEAD"):
                    raise RegistryError(
                        f"{registry} redirected {method} {_redact_url(url)}, which is not supported"
                    )
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise RegistryError(f"{registry}: too many redirects for {_redact_url(url)}")
                url = urljoin(url, response.headers["Location"])
                continue
            if status == 401 and same_host and not reauthenticated:
                challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
                _discard(response)
                self._authenticate(registry, scope, challenge, sent=authorization)
                reauthenticated = True
                continue
            if status == 429 or status >= 500:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                detail = _error_summary(_read_limited(response, _MAX_ERROR_BODY))
                _discard(response)
                reason = f"HTTP {status} for {method} {_redact_url(url)}" + (f" ({detail})" if detail else "")
                raise _Transient(reason, retry_after)
            return response

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None,
    ) -> urllib3.BaseHTTPResponse:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        netloc = parts.netloc.lower()
        hostname, port = _split_host(netloc)
        if port is None:
            port = 443 if scheme == "https" else 80
        connect_host, connect_port = hostname.strip("[]"), port
        pool_kwargs: dict[str, Any] = {}
        override = self._overrides.get(netloc) or self._overrides.get(hostname)
        if override:
            o_host, o_port = _split_host(override)
            connect_host, connect_port = o_host.strip("[]"), o_port or port
            headers["Host"] = netloc
            if scheme == "https":
                pool_kwargs = {"server_hostname": hostname, "assert_hostname": hostname}
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            pool = self._pool.connection_from_host(
                connect_host, connect_port, scheme, pool_kwargs=pool_kwargs or None
            )
            return pool.urlopen(
                method,
                path,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
                timeout=self._timeout,
                release_conn=False,
            )
        except Urllib3SSLError as exc:
            raise RegistryError(
                f"TLS connection to {netloc} failed: {one_line(exc)}",
                hint="pass --ca-file with the CA that signed the registry's certificate",
            ) from None
        except (Urllib3HTTPError, OSError) as exc:
            log.debug("%s %s: %s", method, _redact_url(url), one_line(exc))
            refused = _caused_by(exc, ConnectionRefusedError)
            raise _Transient(
                f"cannot connect to {netloc}: {_connection_problem(exc)}", refused=refused
            ) from None

    # Authentication -----------------------------------------------------------------------------------
    def _authorization(self, registry: str, scope: str) -> str | None:
        with self._lock:
            challenge = self._challenges.get(registry)
            token = self._tokens.get((registry, scope))
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = self._credentials.get(registry)
            return _basic(credentials) if credentials and not credentials.is_identity_token else None
        if token is not None and token.expires_at > time.time():
            return f"Bearer {token.value}"
        # Known Bearer registry, new scope: get a token for our scope now rather than after a 401.
        self._fetch_token(registry, scope, challenge, token_scope=scope)
        with self._lock:
            token = self._tokens.get((registry, scope))
        return f"Bearer {token.value}" if token else None

    def _authenticate(
        self, registry: str, scope: str, challenge: _Challenge | None, *, sent: str | None
    ) -> None:
        if challenge is None:
            raise AuthError(
                f"authentication to {registry} failed: 401 without a usable WWW-Authenticate header"
            )
        with self._lock:
            self._challenges[registry] = challenge
            self._tokens.pop((registry, scope), None)
        if challenge.scheme == "basic":
            credentials = self._credentials.get(registry)
            if credentials is None or credentials.is_identity_token:
                raise AuthError(
                    f"authentication to {registry} failed: "
                    "the registry requires credentials and none were found",
                    hint="log in with docker login, or pass --username and --password-stdin",
                )
            if sent is not None and sent == _basic(credentials):
                raise AuthError(
                    f"authentication to {registry} failed: credentials for user {credentials.username!r} "
                    "were rejected"
                )
            return
        self._fetch_token(registry, scope, challenge, token_scope=challenge.params.get("scope") or scope)

    def _fetch_token(self, registry: str, scope: str, challenge: _Challenge, *, token_scope: str) -> None:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"authentication to {registry} failed: Bearer challenge without a realm")
        service = challenge.params.get("service")
        credentials = self._credentials.get(registry)
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        if credentials is not None and credentials.is_identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.password,
                "client_id": "soci-wrapper",
            }
            if service:
                form["service"] = service
            form["scope"] = token_scope
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = self._send("POST", realm, headers, urlencode(form).encode())
        else:
            params = {k: v for k, v in (("service", service), ("scope", token_scope)) if v}
            if credentials is not None:
                headers["Authorization"] = _basic(credentials)
            response = self._send("GET", _add_query(realm, params), headers, None)
        try:
            status = response.status
            data = _read_limited(response, _MAX_TOKEN_BODY)
        finally:
            _discard(response)
        realm_host = urlsplit(realm).netloc
        if status in (401, 403):
            who = (
                f"user {credentials.username!r}"
                if credentials and not credentials.is_identity_token
                else "us"
            )
            raise AuthError(
                f"authentication to {registry} failed: token server {realm_host} refused {who} "
                f"(HTTP {status}{_detail_suffix(data)})"
            )
        if status == 429 or status >= 500:
            raise _Transient(f"token server {realm_host} answered HTTP {status}", _retry_after(None))
        if status != 200:
            raise AuthError(
                f"authentication to {registry} failed: token server {realm_host} answered HTTP {status}"
                f"{_detail_suffix(data)}"
            )
        try:
            payload = json.loads(data)
            value = payload.get("token") or payload.get("access_token")
            expires_in = float(payload.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(
                f"authentication to {registry} failed: unreadable answer from {realm_host}"
            ) from None
        if not value:
            raise AuthError(f"authentication to {registry} failed: no token in the answer from {realm_host}")
        with self._lock:
            # Expire a little early so a long upload does not start with a token about to lapse.
            self._tokens[(registry, scope)] = _Token(str(value), time.time() + max(expires_in - 10.0, 5.0))

    # Errors -------------------------------------------------------------------------------------------
    def _manifest_media_type(self, target: str, content_type: str, body: bytes) -> str:
        try:
            doc = json.loads(body)
        except ValueError:
            raise RegistryError(f"manifest {target} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"manifest {target} is not a JSON object")
        body_type = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else ""
        if content_type in SCHEMA1_TYPES or body_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise RegistryError(_SCHEMA1_MESSAGE.format(ref=target))
        if content_type not in _GENERIC_CONTENT_TYPES:
            return content_type
        if body_type:
            return str(body_type)
        if "manifests" in doc:
            return OCI_INDEX
        if "layers" in doc or "config" in doc:
            return OCI_MANIFEST
        raise RegistryError(f"cannot tell the media type of manifest {target}")

    def _error(
        self, response: urllib3.BaseHTTPResponse, method: str, registry: str, what: str
    ) -> WrapperError:
        status = response.status
        try:
            data = _read_limited(response, _MAX_ERROR_BODY) if method != "HEAD" else b""
        except _Transient:
            data = b""  # the status says enough
        finally:
            _discard(response)
        detail = _error_summary(data)
        suffix = f": {detail}" if detail else ""
        if status == 404:
            return NotFoundError(f"{what} not found on {registry}{suffix}")
        if status == 401:
            try:
                credentials = self._credentials.get(registry)
            except WrapperError:
                credentials = None
            if credentials is not None and not credentials.is_identity_token:
                return AuthError(
                    f"authentication to {registry} failed: credentials for user {credentials.username!r} "
                    f"were rejected (HTTP 401{suffix})"
                )
            return AuthError(
                f"authentication to {registry} failed: access to {what} denied (HTTP 401{suffix})"
            )
        if status == 403:
            return AuthError(
                f"authentication to {registry} failed: access to {what} forbidden (HTTP 403{suffix})"
            )
        return RegistryError(f"{registry} refused {method} for {what}: HTTP {status}{suffix}")


# Helpers ----------------------------------------------------------------------------------------------
def _with_reference(ref: Reference, reference: str) -> str:
    sep = "@" if reference.startswith("sha256:") else ":"
    return f"{ref.registry}/{ref.repository}{sep}{reference}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _split_host(netloc: str) -> tuple[str, int | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return netloc, None


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _read_limited(response: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        while total < limit:
            data = response.read(min(READ_CHUNK, limit - total))
            if not data:
                break
            chunks.append(data)
            total += len(data)
    except (Urllib3HTTPError, OSError) as exc:
        raise _Transient(f"connection lost while reading a response: {one_line(exc)}") from None
    return b"".join(chunks)


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Release a response: a small unread rest is drained so the connection is reused, else it is closed."""
    try:
        rest = response.read(_MAX_ERROR_BODY + 1)
    except (Urllib3HTTPError, OSError):
        rest = b""
        response.close()
    if len(rest) > _MAX_ERROR_BODY:
        response.close()
    response.release_conn()


def _parse_challenge(header: str) -> _Challenge | None:
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for key, quoted, bare in _CHALLENGE_PARAM_RE.findall(rest):
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
    return _Challenge(scheme.lower(), params) if scheme.lower() in ("bearer", "basic") else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _range_total(content_range: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", content_range)
    return int(match.group(1)) if match else None


def _error_summary(data: bytes) -> str:
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


def _detail_suffix(data: bytes) -> str:
    detail = _error_summary(data)
    return f": {detail}" if detail else ""


def _add_query(url: str, params: Mapping[str, str]) -> str:
    if not params:
        return url
    query = urlencode(params, quote_via=quote, safe=":")
    return url + ("&" if "?" in url else "?") + query


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or anything in its chain of causes is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
    return False


def _connection_problem(exc: BaseException) -> str:
    """A few words for a connection failure (the full text is logged with --debug)."""
    for kind, words in (
        (ConnectionRefusedError, "connection refused"),
        (ConnectionResetError, "connection reset"),
        (TimeoutError, "timed out"),
        (socket.gaierror, "unknown host name"),
    ):
        if _caused_by(exc, kind):
            return words
    if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return one_line(exc)[:120]


def _redact_url(url: str) -> str:
    """The URL without its query (upload state and presigned-URL signatures live there)."""
    return url.split("?", 1)[0]


def _exact_size(chunks: Iterable[bytes], descriptor: Descriptor) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if total > descriptor.size:
            raise RegistryError(f"blob {descriptor.digest}: source is larger than {descriptor.size} bytes")
        yield bytes(chunk)
    if total != descriptor.size:
        raise RegistryError(
            f"blob {descriptor.digest}: source gave {total} bytes, expected {descriptor.size}"
        )


__all__ = [
    "MAX_MANIFEST_BYTES",
    "BlobReadError",
    "BlobStream",
    "Manifest",
    "RegistryClient",
]

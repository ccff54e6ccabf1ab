"""The retrying transport: every HTTP request of the registry client goes through ``Transport.request``.

One urllib3 pool for the whole run. ``request`` adds the ``Authorization`` the Authorizer gives (and, after
a 401, the one it gets: the request is repeated once), follows redirects for GET and HEAD (never forwarding
``Authorization`` to another host), retries transient failures (connection errors, timeouts, 429 honouring
``Retry-After``, 5xx) with exponential backoff and jitter within a budget of attempts and seconds, and maps
the final error status to the project's exception types (errcode). A registry that refuses connections and
has not answered once in this run is given up on after about REFUSED_BUDGET_SECONDS.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

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

from wrapper.core.errors import RegistryError, WrapperError
from wrapper.core.reference import DOCKER_HUB, Reference
from wrapper.core.util import one_line
from wrapper.registry.auth import CredentialStore
from wrapper.registry.authorizer import MAX_TOKEN_BODY, Authorizer, parse_challenge
from wrapper.registry.errcode import (
    MAX_ERROR_BODY,
    Transient,
    caused_by,
    connection_problem,
    error_summary,
    status_error,
)
from wrapper.registry.httpio import discard, read_limited, redact_url, retry_after, split_host

log = logging.getLogger("wrapper.registry")

MAX_MANIFEST_BYTES = 4 << 20
# A registry that refuses connections and has not answered once in this run is given up on after about this
# long: nothing listens there, and waiting longer only delays the error. 5xx and resets keep the full budget.
REFUSED_BUDGET_SECONDS = 3.0
_REFUSED_WAIT_SECONDS = 1.0
_MAX_RETRY_AFTER_SECONDS = 60.0
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DOCKER_HUB_API = "registry-1.docker.io"
_LOOPBACK_RE = re.compile(r"^(?:localhost|127(?:\.[0-9]{1,3}){3}|\[::1\]|::1)$")

Body = bytes | Callable[[], Iterable[bytes]] | None


class Transport:
    """Connections, authentication, redirects and retries for one run; safe to use from several threads.

    Scheme: ``https`` everywhere, except plain ``http`` when ``plain_http`` is set, or for loopback hosts
    when no ``ca_file`` is given. ``endpoint_overrides`` maps a registry host to an ``ip:port`` to connect
    to, keeping the original name for the Host header, SNI and certificate verification.
    """

    def __init__(
        self,
        credentials: CredentialStore,
        *,
        ca_file: str | None,
        plain_http: bool,
        endpoint_overrides: Mapping[str, str] | None,
        max_attempts: int,
        user_agent: str,
        backoff_seconds: float,
        max_retry_seconds: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.credentials = credentials
        self.ca_file = ca_file
        self._plain_http = plain_http
        self._overrides = {k.lower(): v for k, v in (endpoint_overrides or {}).items()}
        self._max_attempts = max_attempts
        self._user_agent = user_agent
        self._backoff = backoff_seconds
        self._max_retry_seconds = max_retry_seconds
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool = urllib3.PoolManager(
            num_pools=32, maxsize=16, block=False, cert_reqs="CERT_REQUIRED", ca_certs=ca_file
        )
        self.authorizer = Authorizer(credentials, self._fetch_small, user_agent=user_agent)
        self._answered: set[str] = set()  # registries that sent at least one HTTP response in this run
        self._answered_lock = threading.Lock()

    def close(self) -> None:
        self._pool.clear()

    # URLs ---------------------------------------------------------------------------------------------
    def scheme(self, registry: str) -> str:
        if self._plain_http:
            return "http"
        hostname = split_host(registry)[0]
        if _LOOPBACK_RE.match(hostname) and self.ca_file is None:
            return "http"
        return "https"

    def base_url(self, registry: str) -> str:
        host = _DOCKER_HUB_API if registry == DOCKER_HUB else registry
        return f"{self.scheme(registry)}://{host}"

    def url(self, ref: Reference, tail: str) -> str:
        """The API URL ``/v2/<repository>/<tail>`` of ``ref``'s registry."""
        return f"{self.base_url(ref.registry)}/v2/{ref.repository}/{tail}"

    # Retries ------------------------------------------------------------------------------------------
    def retrying(self, registry: str) -> Retrying:
        """The retry policy for one operation on ``registry`` (a request, an upload, a small read)."""

        def never_answered_and_refused(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            with self._answered_lock:
                answered = registry in self._answered
            return isinstance(exc, Transient) and exc.refused and not answered

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if never_answered_and_refused(state):
                return _REFUSED_WAIT_SECONDS
            if isinstance(exc, Transient) and exc.retry_after is not None:
                return min(exc.retry_after, _MAX_RETRY_AFTER_SECONDS)
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
            retry=retry_if_exception_type(Transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    @staticmethod
    def gave_up(retrying: Retrying, registry: str, reason: str) -> RegistryError:
        """The error after the last attempt, saying how many attempts were made over how long."""
        message = reason if registry in reason else f"{registry}: {reason}"
        attempts = int(retrying.statistics.get("attempt_number", 1))
        started = retrying.statistics.get("start_time")
        took = f" over {time.monotonic() - started:.1f} s" if isinstance(started, float) else ""
        if attempts == 1:
            return RegistryError(message)
        return RegistryError(f"{message} (gave up after {attempts} attempts{took})")

    # Requests -----------------------------------------------------------------------------------------
    def get_small(
        self,
        url: str,
        *,
        ref: Reference,
        what: str,
        headers: Mapping[str, str],
        allow: Container[int] = (),
        too_large_hint: str | None = None,
    ) -> tuple[urllib3.BaseHTTPResponse, bytes]:
        """GET a small document (a manifest, a referrers list), reading its body inside the retry loop so
        that a connection lost mid-body is retried like one lost before the headers. At most 4 MiB + 1 byte
        is read (callers check the limit); a larger declared Content-Length is refused at once (RegistryError
        with ``too_large_hint``)."""
        retrying = self.retrying(ref.registry)
        try:
            for attempt in retrying:
                with attempt:
                    response = self.request(
                        "GET", url, ref=ref, what=what, headers=headers, allow=allow, retry=False
                    )
                    try:
                        declared = response.headers.get("Content-Length")
                        if declared is not None and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                            raise RegistryError(
                                f"{what} is {declared} bytes, over the 4 MiB limit", hint=too_large_hint
                            )
                        return response, read_limited(response, MAX_MANIFEST_BYTES + 1)
                    finally:
                        discard(response)
        except Transient as exc:
            raise self.gave_up(retrying, ref.registry, exc.reason) from None
        raise AssertionError("unreachable: the retry loop returns or raises")

    def request(
        self,
        method: str,
        url: str,
        *,
        ref: Reference,
        what: str,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        allow: Container[int] = (),
        retry: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request (with auth, redirects and, unless ``retry`` is False, retries) and return the
        response, body unread. ``body`` may be a function returning the body's chunks: it is called for
        each try. With ``retry`` False a transient failure raises Transient for the caller's retry loop.

        2xx answers and statuses in ``allow`` are returned (the caller releases the connection); other
        statuses raise NotFoundError (404), AuthError (401/403) or RegistryError.
        """
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        if retry:
            retrying = self.retrying(ref.registry)
            try:
                response: urllib3.BaseHTTPResponse | None = None
                for attempt in retrying:
                    with attempt:
                        response = self._attempt(method, url, ref.registry, scope, headers, body)
                assert response is not None
            except Transient as exc:
                raise self.gave_up(retrying, ref.registry, exc.reason) from None
        else:
            response = self._attempt(method, url, ref.registry, scope, headers, body)
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
        body: Body,
    ) -> urllib3.BaseHTTPResponse:
        api_netloc = urlsplit(self.base_url(registry)).netloc.lower()
        reauthenticated = False
        redirects = 0
        while True:
            netloc = urlsplit(url).netloc.lower()
            same_host = netloc == api_netloc
            send_headers = {"User-Agent": self._user_agent, **(headers or {})}
            authorization = self.authorizer.authorization(registry, scope) if same_host else None
            if authorization:
                send_headers["Authorization"] = authorization
            payload = body() if callable(body) else body
            response = self.send(method, url, send_headers, payload)
            with self._answered_lock:
                self._answered.add(registry)
            status = response.status
            log.debug("%s %s -> %d", method, redact_url(url), status)
            if status in _REDIRECT_STATUSES and response.headers.get("Location"):
                discard(response)
                if method not in ("GET", "HEAD"):
                    raise RegistryError(
                        f"{registry} redirected {method} {redact_url(url)}, which is not supported"
                    )
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise RegistryError(f"{registry}: too many redirects for {redact_url(url)}")
                url = urljoin(url, response.headers["Location"])
                continue
            if status == 401 and same_host and not reauthenticated:
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                discard(response)
                self.authorizer.authenticate(registry, scope, challenge, sent=authorization)
                reauthenticated = True
                continue
            if status == 429 or status >= 500:
                wait = retry_after(response.headers.get("Retry-After"))
                detail = error_summary(read_limited(response, MAX_ERROR_BODY))
                discard(response)
                reason = f"HTTP {status} for {method} {redact_url(url)}" + (f" ({detail})" if detail else "")
                raise Transient(reason, wait)
            return response

    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | Iterable[bytes] | None
    ) -> urllib3.BaseHTTPResponse:
        """One HTTP exchange on the pool, nothing more: the response with its body unread. A failed
        connection raises Transient; a TLS failure RegistryError."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        netloc = parts.netloc.lower()
        hostname, port = split_host(netloc)
        if port is None:
            port = 443 if scheme == "https" else 80
        connect_host, connect_port = hostname.strip("[]"), port
        pool_kwargs: dict[str, Any] = {}
        override = self._overrides.get(netloc) or self._overrides.get(hostname)
        if override:
            o_host, o_port = split_host(override)
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
            log.debug("%s %s: %s", method, redact_url(url), one_line(exc))
            refused = caused_by(exc, ConnectionRefusedError)
            raise Transient(
                f"cannot connect to {netloc}: {connection_problem(exc)}", refused=refused
            ) from None

    def _fetch_small(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """A token server's answer: status, headers and at most 1 MiB of body."""
        response = self.send(method, url, headers, body)
        try:
            return response.status, response.headers, read_limited(response, MAX_TOKEN_BODY)
        finally:
            discard(response)

    def _error(
        self, response: urllib3.BaseHTTPResponse, method: str, registry: str, what: str
    ) -> WrapperError:
        try:
            data = read_limited(response, MAX_ERROR_BODY) if method != "HEAD" else b""
        except Transient:
            data = b""  # the status says enough
        finally:
            discard(response)
        credentials = self.authorizer.credentials_for(registry) if response.status == 401 else None
        return status_error(
            response.status, data, method=method, registry=registry, what=what, credentials=credentials
        )

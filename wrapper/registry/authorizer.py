"""Challenges and tokens: what ``Authorization`` header a request to a registry carries.

A registry says how it wants to be authenticated in the ``WWW-Authenticate`` header of a 401. ``Basic``: the
credentials of the CredentialStore on every request. ``Bearer``: a token from the challenge's ``realm`` (the
token server) for a scope (``repository:NAME:pull`` or ``...:pull,push``), fetched with those credentials
(Basic), with a docker identity token (OAuth2 refresh grant), or anonymously; cached per registry and scope
until shortly before it expires. A token the registry stops accepting (a 401) is dropped and fetched again,
once per request (the transport repeats the request once).

Secrets never appear in logs or messages.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from wrapper.core.errors import AuthError, WrapperError
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.errcode import Transient, detail_suffix, rejected_hint
from wrapper.registry.httpio import add_query, retry_after

# How much of a token server's answer is read.
MAX_TOKEN_BODY = 1 << 20
# A token is used until this long before it expires (at most a quarter of its lifetime), so that a request
# does not start with a token about to lapse.
_EXPIRY_MARGIN_SECONDS = 10.0
_DEFAULT_TOKEN_SECONDS = 60.0
_CHALLENGE_PARAM_RE = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')

# Sends one request to a token server: (method, url, headers, body) -> (status, headers, body); a failed
# connection raises Transient.
TokenFetcher = Callable[[str, str, dict[str, str], bytes | None], tuple[int, Mapping[str, str], bytes]]


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    params: Mapping[str, str]


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # time.time() seconds


def parse_challenge(header: str) -> Challenge | None:
    """The Basic or Bearer challenge of a ``WWW-Authenticate`` header (None for anything else)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for key, quoted, bare in _CHALLENGE_PARAM_RE.findall(rest):
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
    return Challenge(scheme.lower(), params) if scheme.lower() in ("bearer", "basic") else None


def basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class Authorizer:
    """The ``Authorization`` for each request, per registry host; safe to use from several threads."""

    def __init__(self, credentials: CredentialStore, fetch: TokenFetcher, *, user_agent: str) -> None:
        self._credentials = credentials
        self._fetch = fetch
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}

    def credentials_for(self, registry: str) -> Credentials | None:
        """The credentials for ``registry``, or None (also when looking them up fails): for messages."""
        try:
            return self._credentials.get(registry)
        except WrapperError:
            return None

    def authorization(self, registry: str, scope: str) -> str | None:
        """The header for a request to ``registry`` needing ``scope``; None before any challenge."""
        with self._lock:
            challenge = self._challenges.get(registry)
            token = self._tokens.get((registry, scope))
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = self._credentials.get(registry)
            return basic(credentials) if credentials and not credentials.is_identity_token else None
        if token is not None and token.expires_at > time.time():
            return f"Bearer {token.value}"
        # Known Bearer registry, new scope or an expired token: get a token for our scope now, not after a 401.
        token = self._fetch_token(registry, challenge, token_scope=scope)
        with self._lock:
            self._tokens[(registry, scope)] = token
        return f"Bearer {token.value}"

    def authenticate(
        self, registry: str, scope: str, challenge: Challenge | None, *, sent: str | None
    ) -> None:
        """A 401 answered a request that carried ``sent``: learn the challenge, and get what the next try
        should send. AuthError when there is nothing better to send."""
        if challenge is None:
            raise AuthError(
                f"authentication to {registry} failed: 401 without a usable WWW-Authenticate header"
            )
        key = (registry, scope)
        with self._lock:
            self._challenges[registry] = challenge
            current = self._tokens.get(key)
            if challenge.scheme == "bearer" and current is not None and f"Bearer {current.value}" != sent:
                return  # another request already replaced the token that was refused: use that one
            self._tokens.pop(key, None)
        if challenge.scheme == "basic":
            credentials = self._credentials.get(registry)
            if credentials is None or credentials.is_identity_token:
                raise AuthError(
                    f"authentication to {registry} failed: "
                    "the registry requires credentials and none were found",
                    hint="log in with docker login, or pass --username and --password-stdin",
                )
            if sent is not None and sent == basic(credentials):
                raise AuthError(
                    f"authentication to {registry} failed: credentials for user {credentials.username!r} "
                    "were rejected",
                    hint=rejected_hint(credentials, registry),
                )
            return
        token = self._fetch_token(registry, challenge, token_scope=challenge.params.get("scope") or scope)
        with self._lock:
            self._tokens[key] = token

    def _fetch_token(self, registry: str, challenge: Challenge, *, token_scope: str) -> _Token:
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
            status, answer_headers, data = self._fetch("POST", realm, headers, urlencode(form).encode())
        else:
            params = {k: v for k, v in (("service", service), ("scope", token_scope)) if v}
            if credentials is not None:
                headers["Authorization"] = basic(credentials)
            status, answer_headers, data = self._fetch("GET", add_query(realm, params), headers, None)
        realm_host = urlsplit(realm).netloc
        if status in (401, 403):
            if credentials is None:
                who, hint = (
                    "us",
                    f"log in with docker login {registry}, or pass --username and --password-stdin",
                )
            elif credentials.is_identity_token:
                who, hint = "the identity token", f"log in again with docker login {registry}"
            else:
                who, hint = f"user {credentials.username!r}", rejected_hint(credentials, registry)
            raise AuthError(
                f"authentication to {registry} failed: token server {realm_host} refused {who} "
                f"(HTTP {status}{detail_suffix(data)})",
                hint=hint,
            )
        if status == 429 or status >= 500:
            raise Transient(
                f"token server {realm_host} answered HTTP {status}",
                retry_after(answer_headers.get("Retry-After")),
            )
        if status != 200:
            raise AuthError(
                f"authentication to {registry} failed: token server {realm_host} answered HTTP {status}"
                f"{detail_suffix(data)}"
            )
        try:
            payload = json.loads(data)
            value = payload.get("token") or payload.get("access_token")
            expires_in = float(payload.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(
                f"authentication to {registry} failed: unreadable answer from {realm_host}"
            ) from None
        if not value:
            raise AuthError(f"authentication to {registry} failed: no token in the answer from {realm_host}")
        margin = min(_EXPIRY_MARGIN_SECONDS, expires_in / 4)
        return _Token(str(value), time.time() + expires_in - margin)

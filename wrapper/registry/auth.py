"""Where registry credentials come from: explicit flags, ECR, ECR Public, docker's config.json.

Secrets never appear in logs, exception messages or reprs.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from wrapper.core.errors import AuthError, RegistryError
from wrapper.core.reference import DOCKER_HUB, ECR_PUBLIC, ecr_host_info, normalize_host
from wrapper.core.util import one_line

log = logging.getLogger("wrapper.registry")

# The docker config key (and credential-helper server URL) for Docker Hub.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# Username that marks an OAuth2 identity (refresh) token rather than a password.
IDENTITY_TOKEN_USER = "<token>"
# Re-fetch AWS tokens this long before they expire.
_TOKEN_MARGIN_SECONDS = 300.0
_HELPER_TIMEOUT_SECONDS = 30.0
# Where credentials came from (``Credentials.source``), for the hint when a registry rejects them. A credential
# helper's source is its program name, ``docker-credential-NAME``.
SOURCE_EXPLICIT = "--password-stdin"
SOURCE_ECR = "ecr"
SOURCE_ECR_PUBLIC = "ecr-public"
SOURCE_DOCKER_CONFIG = "docker-config"


_ClientFactory = Callable[[str, str], Any]


@dataclass(frozen=True)
class Credentials:
    """A username and a secret (password, token). The secret is left out of repr. ``source``: where they
    came from (a ``SOURCE_*`` value or a credential helper's program name; not part of equality)."""

    username: str
    password: str = field(repr=False)
    source: str = field(default="", compare=False)

    @property
    def is_identity_token(self) -> bool:
        """True for an OAuth2 refresh token (docker's ``identitytoken``), exchanged at the token realm."""
        return self.username == IDENTITY_TOKEN_USER


@dataclass
class _CachedToken:
    credentials: Credentials
    expires_at: float  # time.time() seconds


class CredentialStore:
    """Credentials per registry host, looked up in this order:

    1. ``explicit`` credentials for the host (``--username`` + ``--password-stdin``);
    2. ECR private hosts (``<account>.dkr.ecr.<region>.amazonaws.com``): ``ecr:GetAuthorizationToken``
       through the normal AWS credential chain, cached until shortly before the token expires;
    3. ``public.ecr.aws``: ``ecr-public:GetAuthorizationToken`` in us-east-1;
    4. docker's config.json (``$DOCKER_CONFIG`` or ``~/.docker``): ``credHelpers`` for the host,
       ``auths`` entries, then ``credsStore``;
    5. anonymous (``None``).

    Thread-safe.
    """

    def __init__(
        self,
        *,
        explicit: Mapping[str, Credentials] | None = None,
        docker_config_dir: Path | None = None,
        use_ecr: bool = True,
    ) -> None:
        self._explicit = {
            normalize_host(h): c if c.source else replace(c, source=SOURCE_EXPLICIT)
            for h, c in (explicit or {}).items()
        }
        self._docker_config_dir = docker_config_dir
        self._use_ecr = use_ecr
        self._lock = threading.Lock()
        self._aws_cache: dict[str, _CachedToken] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()
        self._docker_lock = threading.Lock()
        self._docker_cache: dict[str, Credentials | None] = {}

    def __repr__(self) -> str:
        return f"CredentialStore(explicit_hosts={sorted(self._explicit)}, use_ecr={self._use_ecr})"

    def get(self, host: str) -> Credentials | None:
        host = normalize_host(host)
        if host in self._explicit:
            return self._explicit[host]
        if self._use_ecr:
            info = ecr_host_info(host)
            if info is not None:
                try:
                    return self._aws_token(
                        host, lambda: _ecr_token(self._boto_client, host, account=info[0], region=info[1])
                    )
                except AuthError:
                    # No usable AWS credentials: a `docker login` or the ecr-login helper may still have some.
                    found = self._docker_config_credentials(host)
                    if found is None:
                        raise
                    return found
            if host == ECR_PUBLIC:
                try:
                    return self._aws_token(host, lambda: _ecr_public_token(self._boto_client, host))
                except (AuthError, RegistryError) as exc:
                    # Pulling from ECR Public works anonymously; a push will fail with a clear 401 later.
                    log.warning("no ECR Public token (%s); trying docker config, then anonymous", exc)
        return self._docker_config_credentials(host)

    def _docker_config_credentials(self, host: str) -> Credentials | None:
        """What the docker config gives for ``host``, read once per store: a credential helper runs once,
        not once per HTTP request (helpers can be slow, or prompt)."""
        with self._docker_lock:
            if host not in self._docker_cache:
                self._docker_cache[host] = self._from_docker_config(host)
            return self._docker_cache[host]

    # AWS ----------------------------------------------------------------------------------------------
    def _boto_client(self, service: str, region: str) -> Any:
        """One boto3 client per (service, region) for this store: clients are thread-safe, slow to make."""
        with self._clients_lock:
            client = self._clients.get((service, region))
            if client is None:
                client = self._clients[(service, region)] = _boto_client(service, region)
            return client

    def _aws_token(self, host: str, fetch: Callable[[], tuple[Credentials, float]]) -> Credentials:
        with self._lock:
            cached = self._aws_cache.get(host)
            if cached is not None and cached.expires_at - _TOKEN_MARGIN_SECONDS > time.time():
                return cached.credentials
            credentials, expires_at = fetch()
            self._aws_cache[host] = _CachedToken(credentials, expires_at)
            return credentials

    # docker config ------------------------------------------------------------------------------------
    def _config_path(self) -> Path:
        if self._docker_config_dir is not None:
            base = self._docker_config_dir
        elif os.environ.get("DOCKER_CONFIG"):
            base = Path(os.environ["DOCKER_CONFIG"])
        else:
            base = Path.home() / ".docker"
        return base / "config.json"

    def _from_docker_config(self, host: str) -> Credentials | None:
        path = self._config_path()
        config = read_docker_config(path)
        server = DOCKER_HUB_CONFIG_KEY if host == DOCKER_HUB else host
        helpers = config.get("credHelpers") or {}
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if _config_key_host(str(key)) == host and helper:
                    return _run_helper(str(helper), server)
        auths = config.get("auths") or {}
        if isinstance(auths, dict):
            for key, entry in auths.items():
                if _config_key_host(str(key)) == host and isinstance(entry, dict):
                    found = _parse_auth_entry(entry, host, path)
                    if found is not None:
                        return found
        store = config.get("credsStore")
        if store:
            return _run_helper(str(store), server)
        return None


def read_docker_config(path: Path) -> dict[str, Any]:
    """A docker config.json as a dict: ``{}`` when there is none, or when it is empty (docker reads an empty or
    blank file as an empty configuration). AuthError, with what to do, when it cannot be read or parsed."""
    hint = "fix or remove it, or point --docker-config or DOCKER_CONFIG at another directory"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read docker config {path}: {_os_problem(exc)}", hint=hint) from None
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise AuthError(f"cannot read docker config {path}: {where}", hint=hint) from None
    if not isinstance(config, dict):
        raise AuthError(f"cannot read docker config {path}: not a JSON object", hint=hint)
    return config


def _os_problem(exc: BaseException) -> str:
    """``strerror`` of an OSError (without the path, which the message names already), else the text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc)


def _config_key_host(key: str) -> str:
    """The host a config.json key names: ``https://index.docker.io/v1/`` → ``docker.io``."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1]
    return normalize_host(key.split("/", 1)[0])


def _parse_auth_entry(entry: dict[str, Any], host: str, path: Path) -> Credentials | None:
    token = entry.get("identitytoken")
    if token:
        return Credentials(IDENTITY_TOKEN_USER, str(token), SOURCE_DOCKER_CONFIG)
    auth = entry.get("auth")
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(
                f"invalid 'auth' entry for {host} in {path}: not base64 of user:password",
                hint=f"log in again with docker login {host}, or fix the entry",
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(
                f"invalid 'auth' entry for {host} in {path}: expected user:password",
                hint=f"log in again with docker login {host}, or fix the entry",
            )
        return Credentials(user, password, SOURCE_DOCKER_CONFIG)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), SOURCE_DOCKER_CONFIG)
    return None


def _run_helper(name: str, server: str) -> Credentials | None:
    program = f"docker-credential-{name}"
    path = shutil.which(program)
    if path is None:
        raise AuthError(
            f"docker config names credential helper {name!r} but {program} is not on PATH",
            hint="install it, or remove it from config.json",
        )
    try:
        proc = subprocess.run(
            [path, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AuthError(
            f"{program} get timed out after {_HELPER_TIMEOUT_SECONDS:.0f} s for {server}",
            hint=_helper_hint(program, server, "; does it wait for a prompt or a locked keychain?"),
        ) from None
    except OSError as exc:
        raise AuthError(
            f"cannot run {program}: {_os_problem(exc)}", hint="reinstall it, or remove it from config.json"
        ) from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower():
            log.debug("%s has no credentials for %s", program, server)
            return None
        # The helper's own message, which does not hold the secret.
        said = one_line(out or proc.stderr.decode(errors="replace"))[:300] or f"exit status {proc.returncode}"
        raise AuthError(f"{program} get failed for {server}: {said}", hint=_helper_hint(program, server))
    try:
        data = json.loads(out)
        username, secret = str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise AuthError(
            f"{program} get returned unexpected output for {server}", hint=_helper_hint(program, server)
        ) from None
    if not secret:
        return None
    return Credentials(username, secret, program)


def _helper_hint(program: str, server: str, extra: str = "") -> str:
    return (
        f"run `echo {server} | {program} get` yourself to see why{extra}, or log in again with docker login"
    )


# AWS --------------------------------------------------------------------------------------------------
def _boto_client(service: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        connect_timeout=10,
        read_timeout=30,
        retries={"max_attempts": 4, "mode": "standard"},
    )
    return boto3.session.Session().client(service, config=config)  # type: ignore[call-overload]


def _decode_token(token: str, host: str, source: str) -> Credentials:
    try:
        user, sep, password = base64.b64decode(token).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError(f"AWS returned an unreadable authorization token for {host}") from None
    if not sep or not password:
        raise AuthError(f"AWS returned an unreadable authorization token for {host}")
    return Credentials(user, password, source)


def _expiry(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return time.time() + 3600.0


def _ecr_token(
    client_for: _ClientFactory, host: str, *, account: str, region: str
) -> tuple[Credentials, float]:
    log.debug("getting an ECR authorization token for %s (region %s)", host, region)
    try:
        client = client_for("ecr", region)
        response = client.get_authorization_token(registryIds=[account])
        data = response["authorizationData"][0]
    except Exception as exc:
        raise _map_aws_error(exc, host) from None
    return _decode_token(data["authorizationToken"], host, SOURCE_ECR), _expiry(data.get("expiresAt"))


def _ecr_public_token(client_for: _ClientFactory, host: str) -> tuple[Credentials, float]:
    log.debug("getting an ECR Public authorization token")
    try:
        client = client_for("ecr-public", "us-east-1")
        data = client.get_authorization_token()["authorizationData"]
    except Exception as exc:
        raise _map_aws_error(exc, host) from None
    return _decode_token(data["authorizationToken"], host, SOURCE_ECR_PUBLIC), _expiry(data.get("expiresAt"))


_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
        "UnauthorizedOperation",
    }
)


def _map_aws_error(exc: Exception, host: str) -> Exception:
    """Turn a boto3/botocore failure into AuthError or RegistryError with a one-line message."""
    from botocore import exceptions as bex

    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return AuthError(
            f"no AWS credentials found to log in to {host}",
            hint="configure AWS credentials (environment, ~/.aws, instance role) or pass --username",
        )
    if isinstance(exc, bex.NoRegionError):
        return AuthError(f"no AWS region for {host}")
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = one_line(str(error.get("Message", "")))[:300]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _AUTH_CODES or status in (401, 403):
            return AuthError(f"AWS refused the authorization token request for {host}: {code}: {message}")
        if status >= 500:
            return RegistryError(f"AWS failed to issue an authorization token for {host}: {code or status}")
        return AuthError(f"cannot get an authorization token for {host}: {code}: {message}")
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError | bex.ReadTimeoutError):
        return RegistryError(f"cannot reach the AWS endpoint to log in to {host}: {one_line(str(exc))}")
    if isinstance(exc, bex.BotoCoreError):
        return RegistryError(f"cannot get an authorization token for {host}: {one_line(str(exc))}")
    if isinstance(exc, KeyError | IndexError | TypeError):
        return RegistryError(f"AWS returned an unexpected authorization response for {host}")
    return exc

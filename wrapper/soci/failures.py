"""How a failed soci call is told to the user: one line in plain words, and an error of the right kind.

soci's failures keep their kind across the boundary: a registry that refuses the credentials is an
``AuthError`` (exit 3), one that cannot be reached or refuses a request a ``RegistryError`` (5), containerd a
``ContainerdError`` (6), a missing image a ``NotFoundError`` (4). Each is a ``SociError`` too (its callers, the
push retries, see every soci failure as one); anything else is a plain ``SociError`` (7). ``transient`` says
whether another attempt may succeed (5xx, 429, a reset, a timeout).
"""

from __future__ import annotations

import os
import re

from wrapper.core.errors import (
    AuthError,
    ContainerdError,
    NotFoundError,
    NothingToIndexError,
    RegistryError,
    SociError,
)

_STDERR_TAIL_LINES = 12

# Failures of soci push worth another attempt (oras-go already retries what it can replay; an upload with a
# body, a reset or a timeout fails the command) and failures that another attempt cannot fix.
_TRANSIENT = re.compile(
    r"status code (5\d\d|429)|\b(5\d\d|429) (internal server error|bad gateway|service unavailable|"
    r"gateway timeout|too many requests)|connection reset|connection refused|broken pipe|unexpected eof|"
    r"\beof\b|i/o timeout|timeout awaiting|tls handshake timeout|client\.timeout|server closed idle connection|"
    r"connection was forcibly closed|no route to host",
    re.IGNORECASE,
)
_PERMANENT = re.compile(
    r"status code (400|401|403|404|405|413)|unauthorized|forbidden|denied|name unknown|manifest invalid|"
    r"manifest unknown|blob unknown|unsupported|x509:|certificate",
    re.IGNORECASE,
)


class SociAuthError(AuthError, SociError):
    """soci failed because the registry refused the credentials (exit 3)."""


class SociRegistryError(RegistryError, SociError):
    """soci failed because the registry could not be reached or refused a request (exit 5)."""


class SociContainerdError(ContainerdError, SociError):
    """soci failed because containerd could not be reached (exit 6)."""


class SociNotFoundError(NotFoundError, SociError):
    """soci failed because the image or a part of it does not exist (exit 4)."""


def stderr_tail(stderr: str, lines: int = _STDERR_TAIL_LINES) -> str:
    return "\n".join(stderr.strip().splitlines()[-lines:])


def classify_failure(what: str, code: int, stderr: str, *, min_layer_size: int | None = None) -> SociError:
    """Turn a failed soci call into a typed error with plain words for the failures we know."""
    tail = stderr_tail(stderr)
    last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), f"exit status {code}")
    last = last.removeprefix("soci: ").strip()
    low = stderr.lower()
    err: SociError
    if "no ztocs created" in low:
        size = f"{min_layer_size} bytes" if min_layer_size is not None else "10 MiB (soci's default)"
        err = NothingToIndexError(
            f"nothing to index: soci made no zTOC (every layer is under the minimum layer size of {size}, "
            "or in a format it cannot index)",
            hint="lower --min-layer-size to index smaller layers; soci indexes gzip and uncompressed layers",
        )
    elif "dial unix" in low:  # containerd's socket (our registries are reached over TCP)
        err = SociContainerdError(f"{what}: cannot reach containerd: {last}")
    elif _PUSH_RACE.search(tail):
        err = SociRegistryError(f"{what}: the registry did not have every blob of the index: {last}")
    elif refused := _MANIFEST_REFUSED.search(tail):
        # A registry that does not take SOCI index manifest v1 (Docker Hub refuses manifests with a subject or
        # an artifactType): no retry helps, V2 (an ordinary image index and manifests) does. The registry's
        # words, each part once (oras-go repeats the error code's text).
        why: list[str] = []
        for part in refused.group("why").split(": "):
            if part.strip() and part.strip().lower() not in (w.lower() for w in why):
                why.append(part.strip())
        reason = ": ".join(why)[:200]
        err = SociRegistryError(
            f"{what}: the registry refused the SOCI index manifest (HTTP {refused.group('status')}"
            f"{': ' + reason if reason else ''}); it does not accept SOCI index manifest v1",
            hint="use --soci-version V2 with --output-tag TAG: a SOCI-enabled image, which such registries take",
        )
    elif full := _NO_SPACE.search(tail):
        where = os.path.dirname(full.group("path")) if full.group("path") else "its temporary directory"
        err = SociError(
            f"{what}: no space left on device in {where}",
            hint="soci copies each layer it indexes there first: point --work-dir at a file system with room "
            "for the large layers twice, containerd's copy and soci's",
        )
    elif "permission denied" in low:  # a file or socket, not the registry: keep soci's own words
        err = SociError(f"{what} failed (exit {code}): {last}")
    elif any(s in low for s in ("401 unauthorized", "403 forbidden", "unauthorized", "denied:")):
        err = SociAuthError(f"{what}: the registry refused the credentials: {last}")
    elif any(s in low for s in ("connection refused", "no such host", "i/o timeout", "tls:", "x509:")):
        err = SociRegistryError(f"{what}: cannot reach the registry: {last}")
    elif "not found" in low and "image" in low:
        err = SociNotFoundError(f"{what}: {last}")
    else:
        err = SociError(f"{what} failed (exit {code}): {last}")
    err.detail = tail
    err.transient = is_transient_failure(stderr)
    return err


# oras-go (soci push): `PUT "https://host/v2/repo/manifests/sha256:...": response status code 400: manifest
# invalid: manifest invalid: <the registry's detail>` when the registry refuses the manifest it is given.
_MANIFEST_REFUSED = re.compile(
    r'\bPUT "?[^"\s]*/manifests/[^"\s]+"?: response status code (?P<status>400|415|422)\b:?\s*(?P<why>.*)$',
    re.IGNORECASE | re.MULTILINE,
)
# Go's os errors: `write /path/file: no space left on device` (or `open`, `copy`, ...).
_NO_SPACE = re.compile(r"(?:(?P<path>/[^\s:]+):\s*)?no space left on device", re.IGNORECASE)


# Two pushes of the same index at once (two runs, one image): the registry may refuse the manifest because the
# other push's upload of a blob it lists is not complete yet. soci push again finds and uploads what is missing.
_PUSH_RACE = re.compile(r"manifest blob unknown|blob unknown to registry", re.IGNORECASE)


def is_transient_failure(stderr: str) -> bool:
    """Whether soci failed for a reason that another attempt may not meet (5xx, 429, reset, timeout, a blob
    another push of the same index had not finished)."""
    text = stderr_tail(stderr, 4)
    if _PUSH_RACE.search(text):
        return True
    return bool(_TRANSIENT.search(text)) and not _PERMANENT.search(text)

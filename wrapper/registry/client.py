"""A client for the OCI distribution API (any registry: distribution, ECR, Docker Hub, GHCR, ...).

RegistryClient is the façade the rest of the project uses. The work is cut along its concerns:

* ``transport``: the one choke point every HTTP request goes through (``Transport.request``: one urllib3
  pool, authentication, redirects, retries of transient failures, the mapping of error statuses);
* ``authorizer``: challenges, Basic credentials and Bearer tokens;
* ``errcode``: a registry's error answers and broken connections as the project's exception types;
* ``manifests``, ``blobs`` (reads, resumed with Range), ``uploads``, ``referrers`` and ``tags``: the API
  itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from wrapper import __version__
from wrapper.core.models import Descriptor
from wrapper.core.reference import Reference
from wrapper.registry import blobs, manifests, referrers, tags, uploads
from wrapper.registry.auth import CredentialStore
from wrapper.registry.blobs import BlobStream
from wrapper.registry.errcode import BlobReadError, SourceMismatchError
from wrapper.registry.httpio import READ_CHUNK
from wrapper.registry.manifests import Manifest
from wrapper.registry.transport import MAX_MANIFEST_BYTES, REFUSED_BUDGET_SECONDS, Transport
from wrapper.registry.uploads import BlobSource


class RegistryClient:
    """Speaks the distribution API to any registry; safe to use from several threads at once.

    Scheme: ``https`` everywhere, except plain ``http`` when ``plain_http`` is set, or for loopback
    hosts (``localhost``, ``127.x.x.x``, ``::1``) when no ``ca_file`` is given. With a ``ca_file``
    loopback hosts use https too (verified against that CA). ``endpoint_overrides`` maps a registry host
    (``host[:port]``) to an ``ip:port`` to connect to, keeping the original name for the Host header,
    SNI and certificate verification.

    Retries: connection errors, timeouts, 429 (honouring ``Retry-After``) and 5xx are retried with
    exponential backoff and jitter, at most ``max_attempts`` times and ``max_retry_seconds`` in all.
    ``connect_timeout`` and ``read_timeout`` (seconds) bound each connection attempt and each wait for
    the registry's next bytes.
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
        self._transport = Transport(
            credentials,
            ca_file=ca_file,
            plain_http=plain_http,
            endpoint_overrides=endpoint_overrides,
            max_attempts=max_attempts,
            user_agent=user_agent,
            backoff_seconds=backoff_seconds,
            max_retry_seconds=max_retry_seconds,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    @property
    def credentials(self) -> CredentialStore:
        return self._transport.credentials

    @property
    def ca_file(self) -> str | None:
        return self._transport.ca_file

    # URLs ---------------------------------------------------------------------------------------------
    def base_url(self, registry: str) -> str:
        """``scheme://host`` for the API of ``registry`` (Docker Hub's API lives on registry-1.docker.io)."""
        return self._transport.base_url(registry)

    def scheme(self, registry: str) -> str:
        """``http`` or ``https`` for ``registry`` (see the class docstring)."""
        return self._transport.scheme(registry)

    # Manifests ----------------------------------------------------------------------------------------
    def get_manifest(self, ref: Reference, reference: str | None = None) -> Manifest:
        """Fetch a manifest or index by tag or digest (default: ``ref.reference``)."""
        return manifests.get_manifest(self._transport, ref, reference)

    def head_manifest(self, ref: Reference, reference: str | None = None) -> Descriptor | None:
        """The descriptor of a manifest (None if it does not exist), without downloading it if possible."""
        return manifests.head_manifest(self._transport, ref, reference)

    def put_manifest(self, ref: Reference, reference: str, body: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or its digest; returns its digest."""
        return manifests.put_manifest(self._transport, ref, reference, body, media_type)

    # Blobs --------------------------------------------------------------------------------------------
    def open_blob(self, ref: Reference, digest: str, *, offset: int = 0) -> BlobStream:
        """Start streaming blob ``digest`` from byte ``offset`` (a Range request when offset > 0)."""
        return blobs.open_blob(self._transport, ref, digest, offset=offset)

    def read_blob(self, ref: Reference, digest: str, *, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
        """The whole of a small blob (an image config), checked against ``digest``; a broken transfer is
        resumed. RegistryError when it is over ``max_bytes`` or does not match its digest."""
        return blobs.read_blob(self._transport, ref, digest, max_bytes=max_bytes)

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        return blobs.blob_exists(self._transport, ref, digest)

    def push_blob(
        self, ref: Reference, descriptor: Descriptor, source: BlobSource, *, chunk_size: int | None = None
    ) -> bool:
        """Upload a blob unless the repository has it already (then return False).

        ``source()`` yields the blob's bytes; it is called again when the upload restarts after a
        transient failure. ``chunk_size`` None: one monolithic PUT streaming the body; otherwise PATCH
        requests of ``chunk_size`` bytes (one chunk is held in memory), then the closing PUT.
        """
        return uploads.push_blob(self._transport, ref, descriptor, source, chunk_size=chunk_size)

    # Referrers ----------------------------------------------------------------------------------------
    def get_referrers(
        self, ref: Reference, subject_digest: str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Descriptors of the manifests whose ``subject`` is ``subject_digest``.

        Uses the referrers API; where the registry has none (404), the referrers tag ``sha256-<hex>``.
        """
        return referrers.get_referrers(self._transport, ref, subject_digest, artifact_type)

    # Tags ---------------------------------------------------------------------------------------------
    def list_tags(self, ref: Reference, *, limit: int = 1000, page_size: int = tags.PAGE_SIZE) -> list[str]:
        """The tags of ``ref``'s repository (its tag or digest does not matter), at most ``limit``.

        Pages of ``page_size`` tags (``n=``), following the registry's ``Link: <...>; rel="next"`` until
        there is none or ``limit`` tags are in hand; NotFoundError for a repository the registry does not know.
        """
        return tags.list_tags(self._transport, ref, limit=limit, page_size=page_size)


__all__ = [
    "MAX_MANIFEST_BYTES",
    "READ_CHUNK",
    "REFUSED_BUDGET_SECONDS",
    "BlobReadError",
    "BlobStream",
    "Manifest",
    "RegistryClient",
    "SourceMismatchError",
]

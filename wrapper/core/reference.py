"""Image references: parsing the docker reference grammar, ECR registry names."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from wrapper.core.errors import UsageError
from wrapper.core.models import validate_digest

DOCKER_HUB = "docker.io"
# Hosts that name Docker Hub; all are normalised to DOCKER_HUB.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
ECR_PUBLIC = "public.ecr.aws"

_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME_LENGTH = 255
_MAX_TAG_LENGTH = 128
# What to do about a malformed reference, a tag or a repository name (the hint of their UsageErrors).
_REFERENCE_HINT = "use host[:port]/repository[:tag][@sha256:...], e.g. registry.example.com/team/app:1.4"
_TAG_HINT = "up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"
_NAME_HINT = "lowercase letters and digits, separated by '.', '_', '__', '-' or '/'"

_ECR_HOST_RE = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$"
)
_ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
_REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}$")


def _looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def normalize_host(host: str) -> str:
    """Canonical spelling of a registry host (Docker Hub aliases become ``docker.io``)."""
    lowered = host.lower()
    return DOCKER_HUB if lowered in _DOCKER_HUB_ALIASES else lowered


@dataclass(frozen=True)
class Reference:
    """A reference to an image (or artifact) in a registry: ``host/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not self.registry or not _HOST_RE.match(self.registry):
            raise UsageError(f"invalid registry host {self.registry!r}")
        _check_repository(self.repository, self.repository)
        if self.tag is not None and not _TAG_RE.match(self.tag):
            raise UsageError(f"invalid tag {self.tag!r}{_tag_problem(self.tag)}", hint=_TAG_HINT)
        if self.digest is not None:
            validate_digest(self.digest)

    # Construction -------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a reference such as ``nginx``, ``ghcr.io/org/app:1.2``, ``localhost:5000/x@sha256:...``.

        Follows the docker grammar: the first path component is a registry host if it contains ``.`` or
        ``:``, is ``localhost`` or has uppercase letters; otherwise the registry is Docker Hub, where
        single-component names get the ``library/`` prefix. Raises UsageError with the reason.
        """
        original = text
        text = text.strip()
        if not text:
            raise UsageError("invalid image reference: empty", hint=_REFERENCE_HINT)
        if any(c.isspace() for c in text):
            raise UsageError(
                f"invalid image reference {original!r}: contains whitespace", hint=_REFERENCE_HINT
            )
        if "://" in text:
            scheme = text.split("://", 1)[0]
            plain = "; pass --plain-http for a plain-HTTP registry" if scheme.lower() == "http" else ""
            raise UsageError(
                f"invalid image reference {original!r}: a reference has no URL scheme",
                hint=f"leave out '{scheme}://'{plain}",
            )
        digest: str | None = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not digest.startswith("sha256:"):
                raise UsageError(
                    f"invalid image reference {original!r}: unsupported digest {digest!r}",
                    hint="only sha256 digests are supported",
                )
            validate_digest(digest)
        tag: str | None = None
        slash, colon = text.rfind("/"), text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise UsageError(
                    f"invalid image reference {original!r}: invalid tag {tag!r}{_tag_problem(tag)}",
                    hint=_TAG_HINT,
                )
        if not text:
            raise UsageError(
                f"invalid image reference {original!r}: missing repository name", hint=_REFERENCE_HINT
            )
        first, sep, rest = text.partition("/")
        if sep and _looks_like_registry(first):
            registry, repository = first, rest
            if not _HOST_RE.match(registry):
                raise UsageError(
                    f"invalid image reference {original!r}: invalid registry host {registry!r}",
                    hint=_REFERENCE_HINT,
                )
        else:
            registry, repository = DOCKER_HUB, text
        registry = normalize_host(registry)
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        _check_repository(repository, original)
        return cls(registry, repository, tag, digest)

    @classmethod
    def ecr(
        cls,
        account: str,
        region: str,
        repository: str,
        *,
        digest: str | None = None,
        tag: str | None = None,
    ) -> Reference:
        """The reference of ``repository`` in the private ECR registry of ``account`` in ``region``."""
        if not _ACCOUNT_RE.match(account):
            raise UsageError(f"invalid AWS account id {account!r}", hint="expected 12 digits")
        if not _REGION_RE.match(region):
            raise UsageError(f"invalid AWS region {region!r}", hint="expected a region such as eu-west-1")
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return cls(f"{account}.dkr.ecr.{region}.{suffix}", repository, tag, digest)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=validate_digest(digest))

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=tag)

    # Views --------------------------------------------------------------------------------------------
    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if set, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"

    @property
    def ecr_region(self) -> str | None:
        """The AWS region if this is an ECR private registry, else None."""
        match = _ECR_HOST_RE.match(self.registry)
        return match.group("region") if match else None

    @property
    def ecr_account(self) -> str | None:
        match = _ECR_HOST_RE.match(self.registry)
        return match.group("account") if match else None

    @property
    def is_ecr_public(self) -> bool:
        return self.registry == ECR_PUBLIC

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def ecr_host_info(host: str) -> tuple[str, str] | None:
    """``(account, region)`` if ``host`` is an ECR private registry host, else None."""
    match = _ECR_HOST_RE.match(host.lower())
    return (match.group("account"), match.group("region")) if match else None


def _check_repository(repository: str, original: str) -> None:
    if not repository:
        raise UsageError(
            f"invalid image reference {original!r}: missing repository name", hint=_REFERENCE_HINT
        )
    if len(repository) > _MAX_NAME_LENGTH:
        raise UsageError(
            f"invalid image reference {original!r}: repository name longer than 255 characters",
            hint=_NAME_HINT,
        )
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            if component.lower() != component:
                reason = "repository names must be lowercase"
            elif not component:
                reason = "empty path component"
            else:
                reason = f"invalid path component {component!r}"
            raise UsageError(f"invalid image reference {original!r}: {reason}", hint=_NAME_HINT)


def _tag_problem(tag: str) -> str:
    """Why an invalid tag is invalid, when its length is the reason."""
    return f": longer than {_MAX_TAG_LENGTH} characters" if len(tag) > _MAX_TAG_LENGTH else ""

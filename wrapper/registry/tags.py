"""Tags: a repository's tag list (``GET /v2/<name>/tags/list``), page by page.

The first request asks for ``n`` tags; the registry says where the next page is in a ``Link`` header
(``<url>; rel="next"``, usually with ``n`` and ``last``), followed until there is none or ``limit`` tags are
in hand. Every page goes through the transport (authentication, retries, a body read inside the retry loop).
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urljoin

from wrapper.core.errors import RegistryError
from wrapper.core.reference import Reference
from wrapper.registry.httpio import add_query, redact_url
from wrapper.registry.transport import MAX_MANIFEST_BYTES, Transport

log = logging.getLogger("wrapper.registry")

# Tags asked for per page (registries may send fewer, and then a Link to the rest).
PAGE_SIZE = 1000
_LINK_RE = re.compile(r"<([^>]*)>([^<]*)")
_REL_RE = re.compile(r'rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))', re.IGNORECASE)


def list_tags(
    transport: Transport, ref: Reference, *, limit: int = 1000, page_size: int = PAGE_SIZE
) -> list[str]:
    """The tags of ``ref``'s repository, in the registry's order, at most ``limit`` of them."""
    if limit < 0 or page_size < 1:
        raise ValueError("limit must be >= 0 and page_size >= 1")
    tags: list[str] = []
    if limit == 0:
        return tags
    seen: set[str] = set()
    what = f"repository {ref.repository}"
    url: str | None = add_query(transport.url(ref, "tags/list"), {"n": str(min(page_size, limit))})
    visited: set[str] = set()
    while url is not None and len(tags) < limit:
        visited.add(url)
        response, body = transport.get_small(url, ref=ref, headers={"Accept": "application/json"}, what=what)
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{ref.registry} sent a tag list page of {what} over 4 MiB")
        page = _page_tags(ref, body)
        for tag in page:
            if tag not in seen and len(tags) < limit:
                seen.add(tag)
                tags.append(tag)
        following = next_link(response.headers.get("Link"), url)
        if following is not None and (following in visited or not page):
            # A registry that sends us round in circles, or on to empty pages: what we have is all there is.
            log.debug("%s: not following the tag list link %s", ref.registry, redact_url(following))
            following = None
        url = following
    return tags


def next_link(header: str | None, base: str) -> str | None:
    """The absolute URL of the ``rel="next"`` entry of a ``Link`` header (relative to ``base``), or None."""
    for target, params in _LINK_RE.findall(header or ""):
        for quoted, bare in _REL_RE.findall(params):
            if "next" in (quoted or bare).lower().split():
                return str(urljoin(base, target.strip()))
    return None


def _page_tags(ref: Reference, body: bytes) -> list[str]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RegistryError(
            f"{ref.registry} sent an unreadable tag list for {ref.repository}",
            hint="check the registry address, and that it is a container registry",
        )
    tags = doc.get("tags")  # null for a repository without tags
    if tags is None:
        return []
    if not isinstance(tags, list):
        raise RegistryError(f"{ref.registry} sent a tag list for {ref.repository} whose 'tags' is not a list")
    return [str(tag) for tag in tags if isinstance(tag, str) and tag]

"""RegistryClient.list_tags against real registries: zot and Debian's docker-registry (distribution 2.8).

zot paginates ``GET /v2/<name>/tags/list?n=`` with a ``Link: <...>; rel="next"`` header, in tag order.
distribution 2.8 ignores ``n``: it sends every tag at once, in no particular order, without a Link. A proxy
in front of each counts the requests and shows which pages were asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.registry import RegistryServer, start_registry, start_zot
from tests.imagefactory import LayerSpec, build_image, push_image
from tests.proxy import HttpProxy
from wrapper.core.errors import NotFoundError
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.registry.tags import next_link

REPO = "tags/app"
TAGS = [f"t{n:03d}" for n in range(25)]  # more than two pages of 10


def _serve_tagged(server: RegistryServer, directory: Path) -> RegistryServer:
    """Push one image to ``REPO`` under every tag of TAGS."""
    image = build_image(directory, [LayerSpec(4096, seed=7301)])
    body = image.manifest.read_bytes()
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        ref = Reference(server.host, REPO, tag=TAGS[0])
        push_image(client, ref, image)
        for tag in TAGS[1:]:
            client.put_manifest(ref, tag, body, image.media_type)
    return server


@pytest.fixture(scope="module")
def zot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_zot(tmp_path_factory.mktemp("zot-tags"))
    try:
        yield _serve_tagged(server, tmp_path_factory.mktemp("zot-image"))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry-tags"))
    try:
        yield _serve_tagged(server, tmp_path_factory.mktemp("registry-image"))
    finally:
        server.stop()


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False), backoff_seconds=0.01) as client:
        yield client


def _pages(proxy: HttpProxy) -> list[dict[str, list[str]]]:
    """The query of each tag list request that went through ``proxy``."""
    return [parse_qs(urlsplit(r.path).query) for r in proxy.requests if "/tags/list" in r.path]


def test_zot_pages_are_followed_to_the_end(zot: RegistryServer, client: RegistryClient) -> None:
    with HttpProxy(zot.host) as proxy:
        tags = client.list_tags(Reference(proxy.host, REPO, tag="any"), page_size=10)
        pages = _pages(proxy)
    assert tags == TAGS  # every tag once, in zot's (sorted) order
    assert len(pages) == 3, pages  # 10 + 10 + 5
    assert pages[0] == {"n": ["10"]}
    # each later page is the one zot's Link named: after the last tag of the page before
    assert pages[1:] == [{"n": ["10"], "last": [TAGS[9]]}, {"n": ["10"], "last": [TAGS[19]]}]


def test_zot_limit_bounds_the_tags_and_the_requests(zot: RegistryServer, client: RegistryClient) -> None:
    with HttpProxy(zot.host) as proxy:
        ref = Reference(proxy.host, REPO)
        assert client.list_tags(ref, limit=12, page_size=10) == TAGS[:12]
        assert len(_pages(proxy)) == 2  # the second page holds the two missing; no third is asked for
        proxy.reset()
        assert client.list_tags(ref, limit=7) == TAGS[:7]
        assert _pages(proxy) == [{"n": ["7"]}]  # a limit under a page asks for no more than it needs
        proxy.reset()
        assert client.list_tags(ref) == TAGS  # the default limit, 1000, is one page here
        assert _pages(proxy) == [{"n": ["1000"]}]
        proxy.reset()
        assert client.list_tags(ref, limit=0) == []
        assert _pages(proxy) == []


def test_distribution_ignores_n_and_sends_everything(
    distribution: RegistryServer, client: RegistryClient
) -> None:
    with HttpProxy(distribution.host) as proxy:
        ref = Reference(proxy.host, REPO)
        everything = client.list_tags(ref, page_size=10)
        assert _pages(proxy) == [{"n": ["10"]}]  # no Link: one request
        proxy.reset()
        twelve = client.list_tags(ref, limit=12, page_size=10)
        assert len(_pages(proxy)) == 1
    assert sorted(everything) == TAGS
    assert twelve == everything[:12]  # the first ``limit`` of the registry's order


@pytest.mark.parametrize("kind", ["zot", "distribution"])
def test_an_unknown_repository_is_not_found(
    kind: str, request: pytest.FixtureRequest, client: RegistryClient
) -> None:
    server: RegistryServer = request.getfixturevalue(kind)
    with pytest.raises(NotFoundError) as info:
        client.list_tags(Reference(server.host, "no/such-repository"))
    assert "repository no/such-repository not found" in str(info.value)
    assert info.value.hint is not None and "check the repository name" in info.value.hint


def test_a_page_that_fails_is_retried_not_counted_twice(zot: RegistryServer, client: RegistryClient) -> None:
    """A 503 and a connection cut in the middle of a page are retried by the transport, like any request."""
    with HttpProxy(zot.host) as proxy:
        proxy.inject_status("/tags/list", 503, method="GET")
        proxy.cut_after(r"/tags/list\?.*last=", 10, method="GET")
        tags = client.list_tags(Reference(proxy.host, REPO), page_size=10)
        outcomes = [(r.status, r.cut, "last" in r.path) for r in proxy.requests if "/tags/list" in r.path]
    assert tags == TAGS
    assert outcomes[0] == (503, False, False)
    assert (200, True, True) in outcomes  # the cut page was asked for again
    assert len(outcomes) == 5  # 503, page 1, page 2 cut, page 2, page 3


def test_next_link_forms() -> None:
    base = "http://r.example:5000/v2/a/tags/list?n=10"
    assert next_link('</v2/a/tags/list?n=10&last=t09>; rel="next"', base) == (
        "http://r.example:5000/v2/a/tags/list?n=10&last=t09"
    )
    assert next_link("<https://cdn.example/v2/a/tags/list?x=1>;rel=next", base) == (
        "https://cdn.example/v2/a/tags/list?x=1"
    )
    assert next_link('</p>; rel="prev", </n?last=b>; rel="next"', base) == "http://r.example:5000/n?last=b"
    assert next_link('</p>; rel="prev"', base) is None
    assert next_link(None, base) is None

"""The fault matrix: the fault proxy (tests/proxy.py) between soci-wrapper and a real registry (Debian's
docker-registry) breaks one request in a chosen way, and the run still ends with the image in containerd (the
pull) or in the registry (the project's own push, used for SOCI index manifest v2), with exactly the requests
the fault adds: the request once more, or a whole upload (POST and PUT) once more. A Bearer token that expires
mid-run is renewed from a token server on loopback. Faults that must not be survived (content that does not
match its digest, 5xx past the retry budget, an untrusted certificate) end in one line naming the cause, with
nothing stored.

The pull runs through ``pull()`` and the push through ``ImagePusher`` with a client whose backoff is short
(their code is the CLI's); a few cases run the CLI, where its one-line error is the point. soci's own push
(V1) has its matrix in test_push_faults.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.registry import RegistryServer, start_registry
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import Image, ImageIndex, LayerSpec, build_image, index_of
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.core.errors import AuthError, ContainerdError, ExitCode, RegistryError
from wrapper.core.options import PullOptions
from wrapper.core.reference import Reference
from wrapper.image.pull import PullResult, pull
from wrapper.image.push import ImagePusher
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

MANIFESTS = "/manifests/"
BLOBS = "/blobs/sha256:"
UPLOADS = "/blobs/uploads/"
SPARSE = PullOptions(min_layer_size=MIB)  # the 2 MiB layer is pulled, the 64 KiB one is not
# A registry slower than the client's read timeout: the client's timeout, and how long the proxy holds back.
READ_TIMEOUT = 1.0
DELAY = 2.5


# -- fixtures and helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One real registry for the module; every test uses repositories of its own."""
    with start_registry(tmp_path_factory.mktemp("faults-registry")) as server:
        yield server


@pytest.fixture
def proxy(upstream: RegistryServer) -> Iterator[HttpProxy]:
    with HttpProxy(upstream.host) as front:
        yield front


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[RegistryClient]:
    """A client that talks to the registry without the proxy: to set up and to check."""
    with RegistryClient(CredentialStore(use_ecr=False, docker_config_dir=tmp_path)) as client:
        yield client


def make_client(tmp_path: Path, *, read_timeout: float = 120.0, max_attempts: int = 6) -> RegistryClient:
    """A client as the CLI makes it, with a short backoff (and whatever else the test changes)."""
    store = CredentialStore(use_ecr=False, docker_config_dir=tmp_path)
    return RegistryClient(store, backoff_seconds=0.01, read_timeout=read_timeout, max_attempts=max_attempts)


def small_image(tmp_path: Path, request: pytest.FixtureRequest) -> Image:
    """A 2 MiB layer (pulled, indexed) and a 64 KiB one (below --min-layer-size), distinct per test."""
    seed = seed_for(request)
    return build_image(
        tmp_path / "image", [LayerSpec(2 * MIB, seed=seed), LayerSpec(64 * 1024, seed=seed + 1)]
    )


def repo_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]


def paths(requests: list[RecordedRequest], method: str, pattern: str) -> list[RecordedRequest]:
    return [r for r in requests if r.method == method and re.search(pattern, r.path)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("soci-wrapper: error:")]


# -- the pull ---------------------------------------------------------------------------------------------
@dataclass
class Pulled:
    image: Image
    ref: Reference  # through the proxy
    requests: list[RecordedRequest]
    result: PullResult


def pull_through(
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    arm: Callable[[Image], None],
    *,
    read_timeout: float = 120.0,
) -> Pulled:
    """Push a small image, arm the proxy's fault, pull the image through the proxy; check containerd."""
    image = small_image(tmp_path, request)
    repo = f"pull/{repo_name(request)}"
    push(upstream, direct, repo, image)
    arm(image)
    ref = Reference(proxy.host, repo, tag="v1")
    with make_client(tmp_path, read_timeout=read_timeout) as client:
        result = pull(client, containerd_client, ref, SPARSE)
    assert containerd_client.images.get(str(ref)).target.digest == image.digest
    large, small = image.layers
    for blob in (image.manifest, image.config, large):
        assert containerd_client.content.info(blob.digest).size == blob.size  # committed: digest checked
    assert not containerd_client.content.exists(small.digest)
    return Pulled(image, ref, proxy.requests, result)


# fault -> (how to arm it, the method and path of the request it hits, and the Range of that request's second
# try: a manifest is read again whole, a blob from where it broke)
def _inject(pattern: str, status: int, method: str) -> Callable[[HttpProxy, Image], None]:
    return lambda proxy, image: proxy.inject_status(pattern.format(image=image), status, method=method)


PULL_FAULTS: dict[str, tuple[Callable[[HttpProxy, Image], None], str, str, str | None]] = {
    "manifest GET 500": (_inject(MANIFESTS + "v1$", 500, "GET"), "GET", MANIFESTS, None),
    "manifest GET 503": (_inject(MANIFESTS + "v1$", 503, "GET"), "GET", MANIFESTS, None),
    "config GET 500": (_inject("/blobs/{image.config.digest}", 500, "GET"), "GET", "config", None),
    "config GET 503": (_inject("/blobs/{image.config.digest}", 503, "GET"), "GET", "config", None),
    "layer GET 500": (_inject("/blobs/{image.layers[0].digest}", 500, "GET"), "GET", "layer", None),
    "layer GET 503": (_inject("/blobs/{image.layers[0].digest}", 503, "GET"), "GET", "layer", None),
    "manifest body cut short": (
        lambda proxy, image: proxy.cut_after(MANIFESTS, 100, method="GET"),
        "GET",
        MANIFESTS,
        None,
    ),
    "config body cut short": (
        lambda proxy, image: proxy.cut_after(f"/blobs/{image.config.digest}", 100, method="GET"),
        "GET",
        "config",
        "bytes=100-",
    ),
}


@pytest.mark.parametrize("fault", list(PULL_FAULTS))
def test_pull_survives_one_fault(
    fault: str,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    arm, method, target, resumed = PULL_FAULTS[fault]
    pulled = pull_through(
        proxy, containerd_client, direct, upstream, tmp_path, request, lambda image: arm(proxy, image)
    )
    pattern = {"config": pulled.image.config.digest, "layer": pulled.image.layers[0].digest}.get(
        target, target
    )
    hit = paths(pulled.requests, method, pattern)
    # the faulted request, then the same request again, answered; nothing else repeated
    assert [r.injected or r.cut for r in hit] == [True, False], hit
    assert (hit[1].status, hit[1].header("range")) == ((206, resumed) if resumed else (200, None))
    assert len(pulled.requests) == 3 + 1  # manifest, config, layer; one more for the fault


@pytest.mark.parametrize("reset", [False, True], ids=["body-cut-short", "connection-reset"])
def test_pull_resumes_a_broken_layer_with_range(
    reset: bool,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cut = 3 * MIB // 2

    def arm(image: Image) -> None:
        # (a reset drops what the client has not read yet: give it a moment to read the bytes sent)
        proxy.cut_after(f"/blobs/{image.layers[0].digest}", cut, method="GET", reset=reset, settle=0.3)

    pulled = pull_through(proxy, containerd_client, direct, upstream, tmp_path, request, arm)
    layer = pulled.image.layers[0]
    first, second = paths(pulled.requests, "GET", layer.digest)
    assert first.cut and first.body_bytes == cut and first.header("range") is None
    match = re.fullmatch(r"bytes=(\d+)-", second.header("range") or "")
    assert match, second.headers
    offset = int(match.group(1))
    assert 0 < offset <= cut  # what containerd held: no byte fetched twice beyond the cut
    assert second.status == 206 and second.body_bytes == layer.size - offset
    record = next(b for b in pulled.result.blobs if b.digest == layer.digest)
    assert record.resumed_from == offset
    assert len(pulled.requests) == 4


@pytest.mark.parametrize("where", ["before-headers", "mid-body"])
def test_pull_survives_a_registry_slower_than_the_read_timeout_once(
    where: str,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    after = MIB if where == "mid-body" else None

    def arm(image: Image) -> None:
        proxy.delay(f"/blobs/{image.layers[0].digest}", DELAY, method="GET", after_bytes=after)

    started = time.monotonic()
    pulled = pull_through(
        proxy, containerd_client, direct, upstream, tmp_path, request, arm, read_timeout=READ_TIMEOUT
    )
    assert time.monotonic() - started < 10
    first, second = paths(pulled.requests, "GET", pulled.image.layers[0].digest)
    assert first.delayed and not second.delayed
    # the client gave up after its read timeout, without waiting out the delay (the second request proves it)
    assert second.at - first.at >= READ_TIMEOUT
    if after is None:
        assert second.header("range") is None and second.status == 200
        assert second.at - first.at < DELAY  # retried at once, after 10 ms of backoff
    else:  # resumed where the stalled body stopped
        assert second.header("range") == f"bytes={MIB}-" and second.status == 206
    assert len(pulled.requests) == 4


def test_pull_honours_retry_after_on_429(
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    def arm(image: Image) -> None:
        proxy.inject_status(f"/blobs/{image.layers[0].digest}", 429, headers={"Retry-After": "1"})

    pulled = pull_through(proxy, containerd_client, direct, upstream, tmp_path, request, arm)
    first, second = paths(pulled.requests, "GET", pulled.image.layers[0].digest)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0  # Retry-After: 1, not the 10 ms backoff
    assert len(pulled.requests) == 4


# -- the project's own push (V2) ---------------------------------------------------------------------------
@dataclass
class Staged:
    index: ImageIndex
    image_name: str  # the image record in containerd
    dest: Reference  # through the proxy


@pytest.fixture
def staged(
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Staged:
    """A one-platform image index, whole in containerd (as soci convert leaves a V2 image), to be pushed to a
    repository of its own that has none of its blobs (so every blob is uploaded)."""
    index = index_of([small_image(tmp_path, request)])
    name = repo_name(request)
    source = push(upstream, direct, f"src/{name}", index)
    pulled = pull(direct, containerd_client, source, PullOptions(full=True))
    return Staged(index, pulled.image_name, Reference(proxy.host, f"dst/{name}", tag="soci"))


def push_staged(
    staged: Staged,
    containerd_client: ContainerdClient,
    tmp_path: Path,
    *,
    uploads: int = 4,
    read_timeout: float = 120.0,
    max_attempts: int = 6,
) -> None:
    with make_client(tmp_path, read_timeout=read_timeout, max_attempts=max_attempts) as client:
        pusher = ImagePusher(containerd_client, client, max_concurrent_uploads=uploads)
        pusher.push(staged.image_name, staged.dest)


def upstream_dest(staged: Staged, upstream: RegistryServer) -> Reference:
    """The destination repository, without the proxy."""
    return Reference(upstream.host, staged.dest.repository)


def assert_pushed(staged: Staged, direct: RegistryClient, upstream: RegistryServer) -> None:
    dest = upstream_dest(staged, upstream)
    assert direct.get_manifest(dest, "soci").descriptor.digest == staged.index.digest
    image = staged.index.images[0]
    assert direct.get_manifest(dest, image.digest).body == image.manifest.read_bytes()
    for blob in image.blobs:
        assert direct.blob_exists(dest, blob.digest)


def upload_put(image: Image, which: str) -> str:
    """The closing PUT of the upload of ``which`` (layer or config): its query names the digest."""
    blob = image.layers[0] if which == "layer" else image.config
    return UPLOADS + f".*digest={re.escape(blob.digest)}"


# Without a fault the push makes 11 requests: HEAD, POST and PUT for each of the 3 blobs, then the manifest
# by digest, then the tag. fault: (method, path pattern, status, requests of that kind, requests in all)
PUSH_FAULTS: dict[str, tuple[str, str, int, int, int]] = {
    "manifest PUT 500": ("PUT", MANIFESTS + "sha256:", 500, 2, 12),
    "manifest PUT 503 (the tag)": ("PUT", MANIFESTS + "soci$", 503, 2, 12),
    "blob HEAD 500": ("HEAD", BLOBS, 500, 4, 12),
    "blob HEAD 503": ("HEAD", BLOBS, 503, 4, 12),
    "upload POST 500": ("POST", UPLOADS, 500, 4, 12),
    "upload POST 503": ("POST", UPLOADS, 503, 4, 12),
    # an upload that failed at its PUT starts again from a new session: a POST and a PUT more
    "upload PUT 500": ("PUT", UPLOADS, 500, 4, 13),
    "upload PUT 503": ("PUT", UPLOADS, 503, 4, 13),
}


@pytest.mark.parametrize("fault", list(PUSH_FAULTS))
def test_push_survives_one_fault(
    fault: str,
    staged: Staged,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    method, pattern, status, hits, total = PUSH_FAULTS[fault]
    proxy.inject_status(pattern, status, method=method)
    push_staged(staged, containerd_client, tmp_path)
    requests = proxy.requests
    assert [r.status for r in requests if r.injected] == [status]
    assert len(paths(requests, method, pattern)) == hits, [(r.method, r.path, r.status) for r in requests]
    assert len(requests) == total
    assert_pushed(staged, direct, upstream)


def test_push_honours_retry_after_on_429(
    staged: Staged,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    put = upload_put(staged.index.images[0], "layer")
    proxy.inject_status(put, 429, method="PUT", headers={"Retry-After": "1"})
    push_staged(staged, containerd_client, tmp_path)
    first, second = paths(proxy.requests, "PUT", put)
    assert (first.status, second.status) == (429, 201)
    assert second.at - first.at >= 1.0
    assert len(proxy.requests) == 11 + 2  # the upload again: POST and PUT
    assert_pushed(staged, direct, upstream)


def test_push_survives_a_connection_cut_mid_upload(
    staged: Staged,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    put = upload_put(staged.index.images[0], "layer")
    proxy.cut_request_after(put, 256 * 1024, method="PUT")
    push_staged(staged, containerd_client, tmp_path)
    first, second = paths(proxy.requests, "PUT", put)
    assert first.cut and second.status == 201
    assert len(proxy.requests) == 11 + 2
    assert_pushed(staged, direct, upstream)


def test_push_survives_a_registry_slower_than_the_read_timeout_once(
    staged: Staged,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    proxy.delay(MANIFESTS + "soci$", DELAY, method="PUT")
    push_staged(staged, containerd_client, tmp_path, read_timeout=READ_TIMEOUT)
    first, second = paths(proxy.requests, "PUT", MANIFESTS + "soci$")
    assert first.delayed and second.status == 201
    assert READ_TIMEOUT <= second.at - first.at < DELAY
    assert len(proxy.requests) == 12
    assert_pushed(staged, direct, upstream)


@pytest.mark.parametrize("status", [500, 503])
def test_chunked_upload_survives_a_fault_on_a_patch(
    status: int,
    proxy: HttpProxy,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Chunked uploads (PATCH) are the client's alone (the V2 push streams one PUT): the upload starts again."""
    layer = small_image(tmp_path, request).layers[0]
    ref = Reference(proxy.host, f"chunked/{repo_name(request)}")
    proxy.inject_status(UPLOADS, status, method="PATCH")
    with make_client(tmp_path) as client:
        assert client.push_blob(ref, layer.descriptor, layer.source(), chunk_size=512 * 1024) is True
    requests = proxy.requests
    chunks = -(-layer.size // (512 * 1024))
    assert [r.method for r in requests].count("POST") == 2
    assert [r.status for r in paths(requests, "PATCH", UPLOADS)] == [status] + [202] * chunks
    assert len(paths(requests, "PUT", UPLOADS)) == 1
    assert direct.blob_exists(Reference(upstream.host, ref.repository), layer.digest)


# -- a Bearer token that expires in the middle of a run ----------------------------------------------------
class TokenServer:
    """A token server on loopback, in front of which the proxy accepts only the tokens it issued. The first
    token issued for the actions ``expiring`` (``pull``, ``pull,push``) stops being accepted after ``uses``
    requests, as a token that expired would; the others stay valid. Tokens say they last 60 s, so the client
    cannot know."""

    def __init__(self, *, expiring: str, uses: int) -> None:
        self.expiring, self.uses = expiring, uses
        self.scopes: list[str] = []  # the scope of each token issued, in order
        self._used: dict[str, int] = {}
        self._doomed: str | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                token = server.issue(query.get("scope", [""])[0])
                body = json.dumps({"token": token, "expires_in": 60}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self._http.server_address[1]}/token"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def issue(self, scope: str) -> str:
        with self._lock:
            token = f"token-{len(self.scopes) + 1}"
            self.scopes.append(scope)
            self._used[token] = 0
            if self._doomed is None and scope.rsplit(":", 1)[-1] == self.expiring:
                self._doomed = token
            return token

    def accept(self, token: str) -> bool:
        with self._lock:
            if token not in self._used or (token == self._doomed and self._used[token] >= self.uses):
                return False
            self._used[token] += 1
            return True


def test_pull_gets_a_new_token_when_one_expires(
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    with TokenServer(expiring="pull", uses=2) as tokens:
        proxy.require_bearer(tokens.realm, "faults", tokens.accept)
        pulled = pull_through(
            proxy, containerd_client, direct, upstream, tmp_path, request, lambda image: None
        )
    repo = pulled.ref.repository
    assert tokens.scopes == [f"repository:{repo}:pull"] * 2
    image = pulled.image
    seen = [
        (r.method, r.path.rsplit("/", 1)[1], r.status, r.header("authorization")) for r in pulled.requests
    ]
    assert seen == [
        ("GET", "v1", 401, None),  # the challenge
        ("GET", "v1", 200, "Bearer token-1"),
        ("GET", image.config.digest, 200, "Bearer token-1"),
        ("GET", image.layers[0].digest, 401, "Bearer token-1"),  # expired
        ("GET", image.layers[0].digest, 200, "Bearer token-2"),  # a new token, the request once more
    ]


def test_push_gets_a_new_token_when_one_expires(
    staged: Staged,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    with TokenServer(expiring="pull,push", uses=3) as tokens:
        proxy.require_bearer(tokens.realm, "faults", tokens.accept)
        push_staged(staged, containerd_client, tmp_path, uploads=1)
    scope = f"repository:{staged.dest.repository}"
    assert tokens.scopes == [f"{scope}:pull", f"{scope}:pull,push", f"{scope}:pull,push"]
    requests = proxy.requests
    refused = [r for r in requests if r.status == 401]
    assert [(r.method, r.header("authorization")) for r in refused] == [
        ("HEAD", None),
        ("PUT", "Bearer token-2"),
    ]
    again = requests[requests.index(refused[1]) + 1]
    assert (again.method, again.path, again.status) == ("PUT", refused[1].path, 201)  # the same upload, once
    assert again.header("authorization") == "Bearer token-3"
    assert len(requests) == 11 + 2
    assert_pushed(staged, direct, upstream)


def test_a_fresh_token_that_is_refused_too_is_final(proxy: HttpProxy, tmp_path: Path) -> None:
    with TokenServer(expiring="", uses=0) as tokens:  # every token is refused
        tokens.accept = lambda token: False  # type: ignore[method-assign]
        proxy.require_bearer(tokens.realm, "faults", tokens.accept)
        with make_client(tmp_path) as client, pytest.raises(AuthError, match="HTTP 401"):
            client.get_manifest(Reference(proxy.host, "nobody/app", tag="v1"))
    assert [r.status for r in proxy.requests] == [401, 401]
    assert len(tokens.scopes) == 1


# -- faults that must end the run cleanly ------------------------------------------------------------------
def test_cli_pull_of_a_layer_that_does_not_match_its_digest_fails_cleanly(
    proxy: HttpProxy,
    containerd: ManagedContainerd,
    containerd_namespace: str,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    image = small_image(tmp_path, request)
    repo = f"corrupt/{repo_name(request)}"
    push(upstream, direct, repo, image)
    layer = image.layers[0]
    proxy.corrupt(f"/blobs/{layer.digest}", at=1000, method="GET")
    proc = run_cli(
        "pull", f"{proxy.host}/{repo}:v1", "--containerd-address", containerd.address,
        "--namespace", containerd_namespace, "--min-layer-size", "1MiB", "--json",
    )  # fmt: skip
    assert proc.returncode == ExitCode.REGISTRY, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"served {layer.digest} with the wrong content" in lines[0]
    assert len(paths(proxy.requests, "GET", layer.digest)) == 1  # not fetched again
    with ContainerdClient(containerd.address, containerd_namespace) as client:
        assert client.images.list() == []
        assert not client.content.exists(layer.digest)


def test_push_of_local_content_that_does_not_match_its_digest_fails_cleanly(
    staged: Staged,
    proxy: HttpProxy,
    containerd: ManagedContainerd,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    layer = staged.index.images[0].layers[0]
    (blob_file,) = containerd.work_dir.rglob(f"blobs/sha256/{layer.digest.split(':')[1]}")
    data = bytearray(blob_file.read_bytes())
    data[1000] ^= 0xFF
    blob_file.chmod(0o644)
    blob_file.write_bytes(bytes(data))
    with pytest.raises(ContainerdError) as info:  # the fault is containerd's copy, not the registry
        push_staged(staged, containerd_client, tmp_path)
    message = str(info.value)
    assert message.startswith(f"containerd's copy of blob {layer.digest} is damaged: "), message
    assert "the bytes to upload do not match its digest" in message and "\n" not in message, message
    requests = proxy.requests
    assert len(paths(requests, "PUT", upload_put(staged.index.images[0], "layer"))) == 1  # not retried
    assert paths(requests, "PUT", MANIFESTS) == []  # nothing made visible
    dest = upstream_dest(staged, upstream)
    assert not direct.blob_exists(dest, layer.digest)
    assert direct.head_manifest(dest, "soci") is None


def test_push_past_the_retry_budget_fails_cleanly(
    staged: Staged,
    proxy: HttpProxy,
    containerd_client: ContainerdClient,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
) -> None:
    proxy.inject_status(MANIFESTS + "sha256:", 500, method="PUT", times=100)
    with pytest.raises(RegistryError) as info:
        push_staged(staged, containerd_client, tmp_path, max_attempts=3)
    message = str(info.value)
    assert "HTTP 500" in message and "gave up after 3 attempts" in message and "\n" not in message
    assert len(paths(proxy.requests, "PUT", MANIFESTS)) == 3  # the budget, and no tag after it
    assert direct.head_manifest(upstream_dest(staged, upstream), "soci") is None


def test_cli_pull_past_the_retry_budget_fails_cleanly(
    proxy: HttpProxy,
    containerd: ManagedContainerd,
    containerd_namespace: str,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    repo = f"down/{repo_name(request)}"
    push(upstream, direct, repo, small_image(tmp_path, request))
    # Retry-After: 0 keeps the CLI's own budget (6 attempts) quick
    proxy.inject_status(MANIFESTS, 503, method="GET", times=100, headers={"Retry-After": "0"})
    proc = run_cli(
        "pull", f"{proxy.host}/{repo}:v1", "--containerd-address", containerd.address,
        "--namespace", containerd_namespace, "--json",
    )  # fmt: skip
    assert proc.returncode == ExitCode.REGISTRY, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "HTTP 503" in lines[0] and "gave up after 6 attempts" in lines[0], lines[0]
    assert json.loads(proc.stdout)["exit_code"] == ExitCode.REGISTRY
    assert len(proxy.requests) == 6
    with ContainerdClient(containerd.address, containerd_namespace) as client:
        assert client.images.list() == []


def test_cli_pull_from_an_untrusted_certificate_fails_cleanly(
    tls_registry: RegistryServer, containerd: ManagedContainerd, containerd_namespace: str
) -> None:
    """The TLS fixture under a name that is not loopback (so HTTPS is used), without --ca-file: its
    certificate is signed by a CA nobody trusts. Not retried: one line, the cause and the fix."""
    host = f"registry.faults.test:{tls_registry.port}"
    started = time.monotonic()
    proc = run_cli(
        "pull", f"{host}/secure/app:v1", "--endpoint-override", f"registry.faults.test={tls_registry.host}",
        "--containerd-address", containerd.address, "--namespace", containerd_namespace, "--json",
    )  # fmt: skip
    assert proc.returncode == ExitCode.REGISTRY, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"soci-wrapper: error: TLS connection to {host} failed: "), lines[0]
    assert "certificate verify failed" in lines[0] and "pass --ca-file" in lines[0], lines[0]
    assert "gave up" not in lines[0] and "retrying" not in proc.stderr  # a certificate is not transient
    assert time.monotonic() - started < 15
    assert json.loads(proc.stdout)["exit_code"] == ExitCode.REGISTRY
    with ContainerdClient(containerd.address, containerd_namespace) as client:
        assert client.images.list() == []


def test_cli_pull_from_a_loopback_tls_registry_without_ca_file_says_why(
    tls_registry: RegistryServer, containerd: ManagedContainerd, containerd_namespace: str
) -> None:
    """A loopback registry is plain HTTP unless --ca-file is given: the TLS fixture answers that with a 400,
    which the error explains."""
    proc = run_cli(
        "pull", f"{tls_registry.host}/secure/app:v1", "--containerd-address", containerd.address,
        "--namespace", containerd_namespace, "--json",
    )  # fmt: skip
    assert proc.returncode == ExitCode.REGISTRY, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tls_registry.host} speaks HTTPS, but was sent plain HTTP" in lines[0], lines[0]
    assert "--ca-file" in lines[0] and "retrying" not in proc.stderr


@pytest.mark.soci
def test_cli_v2_push_of_a_blob_corrupted_on_the_way_fails_cleanly(
    proxy: HttpProxy,
    direct: RegistryClient,
    upstream: RegistryServer,
    soci_bin: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A zTOC upload whose bytes change on the way: the registry refuses the digest; nothing is tagged."""
    repo = f"v2corrupt/{repo_name(request)}"
    ref = push(upstream, direct, repo, small_image(tmp_path, request))
    proxy.corrupt(UPLOADS, at=0, method="PUT", request=True)
    proc = run_cli(
        "index", f"{proxy.host}/{repo}@{ref.digest}", "--soci-bin", soci_bin, "--min-layer-size", "1MiB",
        "--soci-version", "V2", "--output-tag", "soci", "--work-dir", str(tmp_path / "w"), "--json",
    )  # fmt: skip
    assert proc.returncode == ExitCode.REGISTRY, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "DIGEST_INVALID" in lines[0], lines[0]
    corrupted = [r for r in proxy.requests if r.corrupted]
    assert len(corrupted) == 1 and corrupted[0].status == 400
    assert paths(proxy.requests, "PUT", MANIFESTS) == []
    assert direct.head_manifest(Reference(upstream.host, repo), "soci") is None
    assert list((tmp_path / "w").iterdir()) == []


def test_cli_registry_read_timeout_is_honoured(
    proxy: HttpProxy,
    direct: RegistryClient,
    upstream: RegistryServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``--registry-read-timeout``: a registry slower than it once is asked again, not waited for."""
    image = small_image(tmp_path, request)
    repo = f"pull/{repo_name(request)}"
    push(upstream, direct, repo, image)
    proxy.delay(rf"{BLOBS}{image.layers[0].digest[7:]}", DELAY, method="GET")
    ref = Reference(proxy.host, repo, tag="v1")
    proc = run_cli(
        "pull", str(ref), "--min-layer-size", "1MiB", "--registry-read-timeout", str(READ_TIMEOUT), "--json",
        "--work-dir", str(tmp_path / "w"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gets = paths(proxy.requests, "GET", rf"{BLOBS}{image.layers[0].digest[7:]}")
    assert len(gets) == 2 and gets[0].delayed, gets
    assert READ_TIMEOUT <= gets[1].at - gets[0].at < DELAY
    bad = run_cli("pull", str(ref), "--registry-read-timeout", "0")
    assert bad.returncode == ExitCode.USAGE and "--registry-read-timeout must be a positive" in bad.stderr

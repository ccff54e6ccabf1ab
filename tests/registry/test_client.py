"""RegistryClient against real registries (Debian's docker-registry 2.8) and moto's ECR."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import threading
import time

import pytest

from tests.fixtures.registry import ECR_HOST, MOTO_ECR_PASSWORD, RegistryServer, free_port, make_tls_material
from tests.imagefactory import (
    LayerSpec,
    build_image,
    build_index,
    build_layer,
    push_image,
    push_schema1_image,
)
from tests.proxy import HttpProxy
from wrapper.core.errors import AuthError, NotFoundError, RegistryError
from wrapper.core.models import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, SOCI_INDEX_V1, Descriptor
from wrapper.core.reference import Reference
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import BlobReadError, RegistryClient

MiB = 1 << 20


def sha256_of(chunks) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return "sha256:" + h.hexdigest(), n


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    return {
        "index": build_index(
            directory, [LayerSpec(3 * MiB, seed=1), LayerSpec(300 * 1024, seed=2, compress=None)]
        ),
        "docker": build_index(directory, [LayerSpec(2 * MiB, seed=3)], oci=False),
        "big": build_image(directory, [LayerSpec(8 * MiB, seed=4)]),
        "dir": directory,
    }


@pytest.fixture
def anon_client(tmp_path):
    client = RegistryClient(CredentialStore(docker_config_dir=tmp_path, use_ecr=False), backoff_seconds=0.01)
    yield client
    client.close()


def test_push_monolithic_then_read_back(registry: RegistryServer, anon_client, images):
    index = images["index"]
    ref = Reference.parse(f"{registry.host}/test/app:v1")
    digest = push_image(anon_client, ref, index)
    assert digest == index.digest

    manifest = anon_client.get_manifest(ref)
    assert manifest.descriptor == Descriptor(OCI_INDEX, index.digest, index.index.size)
    assert manifest.body == index.index.read_bytes()
    assert [m["digest"] for m in manifest.json()["manifests"]] == [img.digest for img in index.images]
    assert anon_client.head_manifest(ref) == manifest.descriptor
    assert anon_client.get_manifest(ref, index.digest).body == manifest.body

    image = index.images[1]
    child = anon_client.get_manifest(ref, image.digest)
    assert child.descriptor.media_type == OCI_MANIFEST
    assert child.descriptor.digest == image.digest
    for blob in image.blobs:
        assert anon_client.blob_exists(ref, blob.digest)
        with anon_client.open_blob(ref, blob.digest) as stream:
            assert stream.size == blob.size
            assert sha256_of(stream) == (blob.digest, blob.size)
        # Already there: HEAD says so and nothing is uploaded.
        assert anon_client.push_blob(ref, blob.descriptor, blob.source()) is False


def test_push_chunked_uses_patch(registry: RegistryServer, anon_client, images, tmp_path):
    index = images["docker"]
    with HttpProxy(registry.host) as proxy:
        client = RegistryClient(
            CredentialStore(docker_config_dir=tmp_path, use_ecr=False),
            endpoint_overrides={registry.host: proxy.host},
        )
        ref = Reference.parse(f"{registry.host}/test/chunked:v1")
        assert push_image(client, ref, index, chunked=True, chunk_size=512 * 1024) == index.digest
        patches = [r for r in proxy.requests if r.method == "PATCH"]
        client.close()
    layer = index.images[0].layers[0]
    expected = -(-layer.size // (512 * 1024))
    ranges = [r.header("content-range") for r in patches]
    assert f"0-{512 * 1024 - 1}" in ranges
    assert len(patches) >= 2 * expected  # two platforms, each layer in several chunks
    manifest = anon_client.get_manifest(ref)
    assert manifest.descriptor.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert manifest.descriptor.digest == index.digest
    with anon_client.open_blob(ref, layer.digest) as stream:
        assert sha256_of(stream) == (layer.digest, layer.size)


def test_not_found(registry: RegistryServer, anon_client, images):
    ref = Reference.parse(f"{registry.host}/test/missing:v1")
    with pytest.raises(NotFoundError, match=f"manifest {registry.host}/test/missing:v1 not found") as info:
        anon_client.get_manifest(ref)
    assert "\n" not in str(info.value)
    assert info.value.hint == "check the repository and tag, and that you can pull it"
    assert anon_client.head_manifest(ref) is None
    digest = "sha256:" + "0" * 64
    assert anon_client.blob_exists(ref, digest) is False
    with pytest.raises(NotFoundError, match="blob sha256:0000") as info:
        anon_client.open_blob(ref, digest)
    assert info.value.hint and "push the image again" in info.value.hint
    push_image(anon_client, Reference.parse(f"{registry.host}/test/exists:v1"), images["big"])
    with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN"):
        anon_client.get_manifest(Reference.parse(f"{registry.host}/test/exists:nope"))
    with pytest.raises(NotFoundError) as info:
        anon_client.get_manifest(Reference.parse(f"{registry.host}/test/exists@{digest}"))
    assert info.value.hint == "check the repository and digest, and that you can pull it"


def test_blob_range_resume_through_proxy(registry: RegistryServer, anon_client, images, tmp_path):
    image = images["big"]
    ref = Reference.parse(f"{registry.host}/test/big:v1")
    push_image(anon_client, ref, image)
    layer = image.layers[0]
    with HttpProxy(registry.host) as proxy:
        client = RegistryClient(
            CredentialStore(docker_config_dir=tmp_path, use_ecr=False),
            endpoint_overrides={registry.host: proxy.host},
        )
        proxy.cut_after(r"/blobs/sha256:", 3 * MiB + 12345)
        h = hashlib.sha256()
        with client.open_blob(ref, layer.digest) as stream, pytest.raises(BlobReadError) as info:
            for chunk in stream:
                h.update(chunk)
        position = info.value.position
        assert 2 * MiB <= position <= 3 * MiB + 12345
        with client.open_blob(ref, layer.digest, offset=position) as stream:
            assert stream.size == layer.size
            assert stream.position == position
            for chunk in stream:
                h.update(chunk)
            assert stream.position == layer.size
        client.close()
        gets = [r for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
        served = proxy.body_bytes
    assert "sha256:" + h.hexdigest() == layer.digest
    assert gets[0].header("range") is None and gets[0].cut
    assert gets[1].header("range") == f"bytes={position}-"
    assert gets[1].status == 206
    # The resumed download did not start over: about one blob's worth went over the wire, not 1.5x.
    assert layer.size <= served <= layer.size + 3 * MiB + 12345 - position + 64 * 1024


def test_open_blob_at_end(registry: RegistryServer, anon_client, images):
    image = images["big"]
    ref = Reference.parse(f"{registry.host}/test/end:v1")
    push_image(anon_client, ref, image)
    config = image.config
    with anon_client.open_blob(ref, config.digest, offset=config.size - 10) as stream:
        assert b"".join(stream) == config.read_bytes()[-10:]
    with anon_client.open_blob(ref, config.digest, offset=config.size) as stream:
        assert list(stream) == []
        assert stream.size == config.size


def test_schema1_refused(schema1_registry: RegistryServer, anon_client, tmp_path):
    ref = Reference.parse(f"{schema1_registry.host}/legacy/app:schema1")
    # A real signed schema 1 manifest, accepted by distribution with compatibility.schema1.enabled.
    push_schema1_image(anon_client, ref, tmp_path / "s1")
    with pytest.raises(RegistryError, match="uses Docker schema 1, which is not supported") as info:
        anon_client.get_manifest(ref)
    assert "rebuild/push it with a current Docker or buildx" in str(info.value)
    with pytest.raises(RegistryError, match="schema 1"):
        anon_client.head_manifest(ref)


def test_referrers_tag_fallback(registry: RegistryServer, anon_client, images):
    image = images["big"]
    ref = Reference.parse(f"{registry.host}/test/refs:v1")
    push_image(anon_client, ref, image)
    assert anon_client.get_referrers(ref, image.digest) == []

    empty = b"{}"
    empty_desc = Descriptor(OCI_EMPTY, "sha256:" + hashlib.sha256(empty).hexdigest(), 2)
    anon_client.push_blob(ref, empty_desc, lambda: [empty])
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SOCI_INDEX_V1,
        "config": {"mediaType": SOCI_INDEX_V1, "digest": empty_desc.digest, "size": 2},
        "layers": [],
        "subject": image.manifest.descriptor.to_oci(),
    }
    body = json.dumps(artifact).encode()
    artifact_digest = anon_client.put_manifest(
        ref, "sha256:" + hashlib.sha256(body).hexdigest(), body, OCI_MANIFEST
    )
    referrer = Descriptor(OCI_MANIFEST, artifact_digest, len(body), artifact_type=SOCI_INDEX_V1)
    other = Descriptor(OCI_MANIFEST, image.digest, image.manifest.size, artifact_type="application/x-other")
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [referrer.to_oci(), other.to_oci()]}
    ).encode()
    anon_client.put_manifest(ref, "sha256-" + image.digest.split(":")[1], index, OCI_INDEX)

    found = anon_client.get_referrers(ref, image.digest)
    assert [d.digest for d in found] == [artifact_digest, image.digest]
    assert anon_client.get_referrers(ref, image.digest, SOCI_INDEX_V1) == [referrer]
    assert anon_client.get_referrers(ref, image.digest, SOCI_INDEX_V1)[0].artifact_type == SOCI_INDEX_V1
    assert anon_client.get_referrers(ref, "sha256:" + "1" * 64) == []


def test_retries_503_and_429(registry: RegistryServer, anon_client, images, tmp_path):
    image = images["big"]
    ref = Reference.parse(f"{registry.host}/test/retry:v1")
    push_image(anon_client, ref, image)
    with HttpProxy(registry.host) as proxy:
        client = RegistryClient(
            CredentialStore(docker_config_dir=tmp_path, use_ecr=False),
            endpoint_overrides={registry.host: proxy.host},
            backoff_seconds=0.01,
        )
        proxy.inject_status(r"/manifests/v1$", 503, body=b'{"errors":[{"code":"UNAVAILABLE"}]}')
        proxy.inject_status(r"/manifests/v1$", 429, headers={"Retry-After": "1"})
        started = time.monotonic()
        assert client.get_manifest(ref).descriptor.digest == image.digest
        elapsed = time.monotonic() - started
        statuses = [r.status for r in proxy.requests]
        assert statuses == [503, 429, 200]
        assert elapsed >= 1.0  # Retry-After honoured

        # Upload: a 503 on the closing PUT restarts the upload from a new session; source is re-read.
        layer = build_layer(tmp_path / "l", LayerSpec(100 * 1024, seed=77))
        calls = []

        def source():
            calls.append(1)
            return layer.chunks()

        proxy.inject_status(r"/blobs/uploads/.*digest=", 503, method="PUT")
        assert client.push_blob(ref, layer.descriptor, source) is True
        assert len(calls) == 2
        assert anon_client.blob_exists(ref, layer.digest)

        # Bounded: a registry that keeps failing gives up after max_attempts with a one-line error.
        proxy.reset()
        failing = RegistryClient(
            CredentialStore(docker_config_dir=tmp_path, use_ecr=False),
            endpoint_overrides={registry.host: proxy.host},
            backoff_seconds=0.01,
            max_attempts=3,
        )
        proxy.inject_status(r"/manifests/v1$", 500, times=10)
        with pytest.raises(RegistryError, match="gave up after 3 attempts") as info:
            failing.get_manifest(ref)
        assert "HTTP 500" in str(info.value)
        assert len(proxy.requests) == 3
        client.close()
        failing.close()


def test_unreachable_registry(tmp_path):
    client = RegistryClient(
        CredentialStore(docker_config_dir=tmp_path, use_ecr=False), max_attempts=2, backoff_seconds=0.01
    )
    port = free_port()
    ref = Reference.parse(f"127.0.0.1:{port}/x/y:z")
    with pytest.raises(RegistryError) as info:
        client.get_manifest(ref)
    assert str(info.value).startswith(
        f"cannot connect to 127.0.0.1:{port}: connection refused (gave up after 2"
    )


def test_a_refusing_registry_that_never_answered_gets_a_short_budget(tmp_path):
    """Nothing listens there: about 3 seconds of attempts (not the full budget of 20), whatever the backoff."""
    client = RegistryClient(
        CredentialStore(docker_config_dir=tmp_path, use_ecr=False), max_attempts=20, backoff_seconds=5
    )
    ref = Reference.parse(f"127.0.0.1:{free_port()}/x/y:z")
    with pytest.raises(RegistryError) as info:
        client.get_manifest(ref)
    assert "connection refused (gave up after 3 attempts" in str(info.value)


def test_a_registry_that_answered_before_keeps_its_full_budget(
    tmp_path, registry: RegistryServer, anon_client
):
    """Refused after it answered once in this run (a restart, a load balancer): the normal budget applies."""
    index = build_index(tmp_path, [LayerSpec(1024, seed=77)])
    push_image(anon_client, Reference.parse(f"{registry.host}/test/refused:v1"), index)
    client = RegistryClient(
        CredentialStore(docker_config_dir=tmp_path, use_ecr=False), max_attempts=5, backoff_seconds=0.01
    )
    proxy = HttpProxy(registry.host).start()
    ref = Reference.parse(f"{proxy.host}/test/refused:v1")
    assert client.get_manifest(ref).descriptor.digest == index.digest
    proxy.stop()
    with pytest.raises(RegistryError) as info:
        client.get_manifest(ref)
    assert "connection refused (gave up after 5 attempts" in str(info.value)
    client.close()


def test_concurrent_use(registry: RegistryServer, anon_client, images):
    index = images["index"]
    ref = Reference.parse(f"{registry.host}/test/threads:v1")
    push_image(anon_client, ref, index)
    blobs = [b for img in index.images for b in img.blobs]
    errors: list[BaseException] = []
    results: dict[str, tuple[str, int]] = {}

    def work(blob):
        try:
            for _ in range(3):
                assert anon_client.get_manifest(ref).descriptor.digest == index.digest
                with anon_client.open_blob(ref, blob.digest) as stream:
                    results[blob.digest] = sha256_of(stream)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in blobs * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {b.digest: (b.digest, b.size) for b in blobs}


# TLS, Basic auth, ECR -------------------------------------------------------------------------------------
def test_tls_basic_auth(tls_registry: RegistryServer, images, tmp_path):
    ref = Reference.parse(f"{tls_registry.host}/secure/app:v1")
    user, password = tls_registry.username, tls_registry.password
    assert user and password
    good = CredentialStore(
        explicit={tls_registry.host: Credentials(user, password)},
        use_ecr=False,
        docker_config_dir=tmp_path,
    )
    with RegistryClient(good, ca_file=tls_registry.ca_file) as client:
        assert client.base_url(tls_registry.host).startswith("https://")
        push_image(client, ref, images["big"], chunked=True, chunk_size=2 * MiB)
        assert client.get_manifest(ref).descriptor.digest == images["big"].digest

    bad = CredentialStore(
        explicit={tls_registry.host: Credentials(user, "wrong")},
        use_ecr=False,
        docker_config_dir=tmp_path,
    )
    with RegistryClient(bad, ca_file=tls_registry.ca_file) as client, pytest.raises(AuthError) as info:
        client.get_manifest(ref)
    message = str(info.value)
    assert message.startswith(f"authentication to {tls_registry.host} failed")
    assert "testuser" in message and "wrong" not in message
    assert info.value.hint == "check the username and the password piped to --password-stdin"

    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{user}:wrong".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {tls_registry.host: {"auth": auth}}}))
    stale = CredentialStore(use_ecr=False, docker_config_dir=config)
    with RegistryClient(stale, ca_file=tls_registry.ca_file) as client, pytest.raises(AuthError) as info:
        client.get_manifest(ref)
    assert info.value.hint == (
        f"log in again with docker login {tls_registry.host}, or pass --username and --password-stdin"
    )

    nobody = CredentialStore(use_ecr=False, docker_config_dir=tmp_path)
    with RegistryClient(nobody, ca_file=tls_registry.ca_file) as client, pytest.raises(AuthError) as info:
        client.get_manifest(ref)
    assert "requires credentials and none were found" in str(info.value)
    assert info.value.hint and "docker login" in info.value.hint


def test_tls_untrusted_certificate(tls_registry: RegistryServer, tmp_path):
    other = make_tls_material(tmp_path / "other-ca")
    client = RegistryClient(
        CredentialStore(use_ecr=False, docker_config_dir=tmp_path), ca_file=str(other.ca_file), max_attempts=2
    )
    with pytest.raises(RegistryError, match=f"TLS connection to {tls_registry.host} failed"):
        client.get_manifest(Reference.parse(f"{tls_registry.host}/secure/app:v1"))


def test_ecr_through_moto(tls_registry: RegistryServer, moto_ecr, images, tmp_path):
    """An ECR reference: token from moto's GetAuthorizationToken, decoded, sent to a TLS registry that the
    endpoint override reaches under the ECR hostname (certificate verified for that name)."""
    material = tls_registry.tls
    assert material is not None
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(material.cert_file, material.key_file)
    upstream_ctx = ssl.create_default_context(cafile=str(material.ca_file))
    with HttpProxy(
        tls_registry.host, server_ssl=server_ctx, upstream_ssl=upstream_ctx, upstream_server_hostname=ECR_HOST
    ) as proxy:
        store = CredentialStore(docker_config_dir=tmp_path)
        client = RegistryClient(
            store, ca_file=tls_registry.ca_file, endpoint_overrides={ECR_HOST: proxy.host}
        )
        ref = Reference.ecr(moto_ecr.account, moto_ecr.region, "team/app", tag="v1")
        assert ref.registry == ECR_HOST
        push_image(client, ref, images["docker"])
        assert client.get_manifest(ref).descriptor.digest == images["docker"].digest
        client.close()
        authorizations = {r.header("authorization") for r in proxy.requests} - {None}
        hosts = {r.header("host") for r in proxy.requests}
    expected = "Basic " + base64.b64encode(f"AWS:{MOTO_ECR_PASSWORD}".encode()).decode()
    assert authorizations == {expected}
    assert hosts == {ECR_HOST}


def test_plain_http_and_loopback_scheme(tmp_path):
    store = CredentialStore(use_ecr=False, docker_config_dir=tmp_path)
    assert RegistryClient(store).base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert RegistryClient(store).base_url("localhost:5000") == "http://localhost:5000"
    assert RegistryClient(store).base_url("[::1]:5000") == "http://[::1]:5000"
    assert RegistryClient(store).base_url("ghcr.io") == "https://ghcr.io"
    assert RegistryClient(store).base_url("docker.io") == "https://registry-1.docker.io"
    assert RegistryClient(store, plain_http=True).base_url("ghcr.io") == "http://ghcr.io"
    assert RegistryClient(store, ca_file="/x").base_url("127.0.0.1:5000") == "https://127.0.0.1:5000"


def test_docker_config_credentials_reach_registry(tls_registry: RegistryServer, images, tmp_path):
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{tls_registry.username}:{tls_registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {tls_registry.host: {"auth": auth}}}))
    with RegistryClient(CredentialStore(docker_config_dir=config), ca_file=tls_registry.ca_file) as client:
        ref = Reference.parse(f"{tls_registry.host}/cfg/app:v1")
        push_image(client, ref, images["big"])
        assert client.head_manifest(ref) is not None


@pytest.mark.parametrize("chunk_size", [None, 512 * 1024], ids=["monolithic", "chunked"])
def test_upload_of_a_source_that_does_not_match_its_digest_is_refused(
    registry: RegistryServer, anon_client, tmp_path, chunk_size
):
    """The client checks the bytes it sends and holds the last of them back until it has: the upload never
    completes, whatever the registry would have checked."""
    layer = build_layer(tmp_path / "l", LayerSpec(2 * MiB, seed=91))
    data = bytearray(layer.read_bytes())
    data[-1] ^= 0xFF  # the very last byte: only a check of the whole can see it

    def pieces(blob: bytes) -> list[bytes]:  # most of them sent before the last is read
        return [blob[i : i + 256 * 1024] for i in range(0, len(blob), 256 * 1024)]

    ref = Reference.parse(f"{registry.host}/test/corrupt")
    with HttpProxy(registry.host) as proxy:
        client = RegistryClient(
            CredentialStore(docker_config_dir=tmp_path, use_ecr=False),
            endpoint_overrides={registry.host: proxy.host},
        )
        with pytest.raises(RegistryError, match="the bytes to upload do not match its digest") as info:
            client.push_blob(ref, layer.descriptor, lambda: pieces(bytes(data)), chunk_size=chunk_size)
        client.close()
        requests = proxy.requests
    assert layer.digest in str(info.value)
    assert [r.method for r in requests if r.method == "POST"] == ["POST"]  # not retried
    assert not any(r.status in (201, 204) for r in requests)  # nothing completed
    if chunk_size:  # the chunks before the last went out; the last and the closing PUT did not
        assert [r.method for r in requests][2:] == ["PATCH"] * (len(data) // chunk_size)
    assert anon_client.blob_exists(ref, layer.digest) is False


def test_read_blob_resumes_and_checks_the_digest(registry: RegistryServer, anon_client, images, tmp_path):
    image = images["big"]
    ref = Reference.parse(f"{registry.host}/test/readblob:v1")
    push_image(anon_client, ref, image)
    config = image.config
    with HttpProxy(registry.host) as proxy:
        client = RegistryClient(
            CredentialStore(docker_config_dir=tmp_path, use_ecr=False),
            endpoint_overrides={registry.host: proxy.host},
            backoff_seconds=0.01,
        )
        proxy.cut_after(f"/blobs/{config.digest}", 100)
        assert client.read_blob(ref, config.digest) == config.read_bytes()
        first, second = proxy.requests
        assert first.cut and second.header("range") == "bytes=100-" and second.status == 206

        proxy.reset()
        proxy.corrupt(f"/blobs/{config.digest}", at=10)
        with pytest.raises(RegistryError, match=r"served blob .* with the wrong content") as info:
            client.read_blob(ref, config.digest)
        assert len(proxy.requests) == 1  # not fetched again
        with pytest.raises(RegistryError, match="over 100 bytes"):
            client.read_blob(ref, config.digest, max_bytes=100)
        client.close()
    assert config.digest in str(info.value)

"""The two test registries differ where it matters for SOCI v1: zot answers the OCI referrers API, and
Debian's docker-registry (distribution 2.8) does not, so clients must fall back to the ``sha256-<hex>`` tag.

Raw HTTP on purpose: this checks the registries themselves, not soci-wrapper's client.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
REPO = "referrers/test"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    server: RegistryServer, method: str, url: str, body: bytes | None = None, content_type: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    full = url if url.startswith("http") else server.url + url
    request = urllib.request.Request(full, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _push_blob(server: RegistryServer, data: bytes) -> dict[str, Any]:
    status, headers, _ = _request(server, "POST", f"/v2/{REPO}/blobs/uploads/", b"")
    assert status == 202, status
    location = urllib.parse.urljoin(server.url, headers["Location"])
    separator = "&" if "?" in location else "?"
    digest = _digest(data)
    status, _, body = _request(
        server, "PUT", f"{location}{separator}digest={digest}", data, "application/octet-stream"
    )
    assert status == 201, (status, body)
    return {"mediaType": OCI_EMPTY, "digest": digest, "size": len(data)}


def _push_manifest(
    server: RegistryServer, manifest: dict[str, Any], reference: str | None = None
) -> dict[str, Any]:
    """PUT ``manifest``; returns its descriptor."""
    body = json.dumps(manifest).encode()
    digest = _digest(body)
    status, _, answer = _request(
        server, "PUT", f"/v2/{REPO}/manifests/{reference or digest}", body, OCI_MANIFEST
    )
    assert status == 201, (status, answer)
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body)}


def _image_and_referrer(server: RegistryServer) -> tuple[str, str]:
    """Push an image manifest (tag v1) and an artifact whose ``subject`` is it; return both digests."""
    config = _push_blob(server, b"{}")
    layer = _push_blob(server, b"a layer that is not a tarball, which registries do not check")
    image = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [{**layer, "mediaType": "application/vnd.oci.image.layer.v1.tar"}],
    }
    subject = _push_manifest(server, image, "v1")
    referrer = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SOCI_INDEX_V1,
        "config": {**config, "mediaType": SOCI_INDEX_V1},
        "layers": [],
        "subject": subject,
    }
    return subject["digest"], _push_manifest(server, referrer)["digest"]


def test_zot_answers_the_referrers_api(zot_registry: RegistryServer) -> None:
    image_digest, referrer_digest = _image_and_referrer(zot_registry)
    status, headers, body = _request(zot_registry, "GET", f"/v2/{REPO}/referrers/{image_digest}")
    assert status == 200, body
    assert headers["Content-Type"].startswith(OCI_INDEX)
    index = json.loads(body)
    assert index["mediaType"] == OCI_INDEX
    assert [(m["digest"], m.get("artifactType")) for m in index["manifests"]] == [
        (referrer_digest, SOCI_INDEX_V1)
    ]
    # And nothing refers to the referrer itself.
    status, _, body = _request(zot_registry, "GET", f"/v2/{REPO}/referrers/{referrer_digest}")
    assert status == 200 and json.loads(body)["manifests"] == []


def test_docker_registry_has_no_referrers_api(registry: RegistryServer) -> None:
    image_digest, _ = _image_and_referrer(registry)
    status, _, _ = _request(registry, "GET", f"/v2/{REPO}/referrers/{image_digest}")
    assert status == 404


@pytest.mark.parametrize("server_fixture", ["registry", "zot_registry"])
def test_both_registries_have_the_same_interface(server_fixture: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(server_fixture)
    assert isinstance(server, RegistryServer)
    assert server.host == f"127.0.0.1:{server.port}" and server.url == f"http://{server.host}"
    assert server.storage.is_dir() and server.storage.parent == server.root
    assert server.process.poll() is None
    status, _, _ = _request(server, "GET", "/v2/")
    assert status == 200

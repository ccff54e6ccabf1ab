"""wrapper.image.resolve: documents no registry of ours would store (a stub serves them), each refused with a
RegistryError that says what is wrong and what to do, never an internal error; and the names that moved out
of wrapper.image.pull are still importable from there."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.registry.stub import StubRequest, StubResponse, StubServer
from wrapper.core.errors import ExitCode, RegistryError
from wrapper.core.models import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Platform, ResolvedImage
from wrapper.core.options import PullOptions
from wrapper.core.reference import Reference
from wrapper.image.resolve import resolve_image
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

AMD64 = {"os": "linux", "architecture": "amd64"}
CONFIG = json.dumps({**AMD64, "rootfs": {"type": "layers", "diff_ids": []}}).encode()
MALFORMED_HINT = (
    "the image's manifest is malformed; rebuild and push it with a current docker, buildx or crane"
)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}


def _manifest(**fields: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, **fields}).encode()


def _index(manifests: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


class OddRegistry:
    """A stub that serves the given manifests (by tag ``v1`` or by digest) and the one config blob."""

    def __init__(self, stub: StubServer) -> None:
        self.stub = stub
        stub.route("GET", "/v2/", lambda r: StubResponse(200, {"Content-Type": "application/json"}, b"{}"))
        stub.route("GET", f"/v2/odd/app/blobs/{_digest(CONFIG)}", lambda r: StubResponse(200, {}, CONFIG))

    def serve(self, media_type: str, body: bytes, *, tag: str = "v1") -> None:
        def answer(request: StubRequest) -> StubResponse:
            return StubResponse(
                200, {"Content-Type": media_type, "Docker-Content-Digest": _digest(body)}, body
            )

        for reference in (tag, _digest(body)):
            self.stub.route("GET", f"/v2/odd/app/manifests/{reference}", answer)

    def resolve(self) -> ResolvedImage:
        """Resolve ``odd/app:v1`` for linux/amd64."""
        options = PullOptions(platforms=(Platform("linux", "amd64"),))
        with RegistryClient(CredentialStore(use_ecr=False), max_attempts=1) as client:
            return resolve_image(client, Reference(self.stub.host, "odd/app", tag="v1"), options)


@pytest.fixture
def odd() -> Iterator[OddRegistry]:
    with StubServer() as stub:
        yield OddRegistry(stub)


LAYER = _descriptor(OCI_LAYER_GZIP, b"layer")


def _serve_an_index_of_a_manifest_without_config(odd: OddRegistry) -> None:
    manifest = _manifest(layers=[LAYER])
    odd.serve(OCI_MANIFEST, manifest, tag="amd64")
    odd.serve(OCI_INDEX, _index([_descriptor(OCI_MANIFEST, manifest, platform=AMD64)]))


CASES: dict[str, tuple[Callable[[OddRegistry], None], str]] = {
    "index-manifests-not-a-list": (
        lambda o: o.serve(OCI_INDEX, _index({"not": "a list"})),
        r"the index .*/odd/app:v1 has no list of manifests \('manifests' is an object\)",
    ),
    "index-without-manifests": (
        lambda o: o.serve(OCI_INDEX, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX}).encode()),
        r"the index .*/odd/app:v1 has no list of manifests$",
    ),
    "manifest-config-not-an-object": (
        lambda o: o.serve(OCI_MANIFEST, _manifest(config="sha256:abc", layers=[])),
        r"the manifest of .*/odd/app:v1 has no config descriptor \('config' is a string\), so it is not an image",
    ),
    "manifest-layers-not-a-list": (
        lambda o: o.serve(OCI_MANIFEST, _manifest(config=_descriptor(OCI_CONFIG, CONFIG), layers=LAYER)),
        r"the manifest of .*/odd/app:v1 has no list of layers \('layers' is an object\)",
    ),
    "platform-manifest-without-config": (
        _serve_an_index_of_a_manifest_without_config,
        r"the manifest of .*/odd/app:v1 \(sha256:[0-9a-f]{64}\) has no config descriptor, so it is not an image",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_malformed_document_is_a_registry_error_with_a_hint(odd: OddRegistry, name: str) -> None:
    serve, message = CASES[name]
    serve(odd)
    with pytest.raises(RegistryError) as info:
        odd.resolve()
    assert info.value.exit_code == ExitCode.REGISTRY
    assert re.search(message, info.value.message), info.value.message
    assert "\n" not in str(info.value)
    assert info.value.hint == MALFORMED_HINT


def test_another_platforms_malformed_manifest_is_refused_too(odd: OddRegistry) -> None:
    """Every manifest of an index is stored, so every one is checked, not only the chosen platform's."""
    good = _manifest(config=_descriptor(OCI_CONFIG, CONFIG), layers=[LAYER])
    bad = _manifest(config=None, layers=[])
    arm = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    odd.serve(OCI_MANIFEST, good, tag="amd64")
    odd.serve(OCI_MANIFEST, bad, tag="arm64")
    odd.serve(
        OCI_INDEX,
        _index(
            [_descriptor(OCI_MANIFEST, good, platform=AMD64), _descriptor(OCI_MANIFEST, bad, platform=arm)]
        ),
    )
    with pytest.raises(RegistryError, match=rf"{_digest(bad)}\) has no config descriptor"):
        odd.resolve()


def test_an_object_that_is_not_an_image(odd: OddRegistry) -> None:
    thing = "application/vnd.example.thing.v1+json"
    odd.serve(thing, json.dumps({"schemaVersion": 2, "mediaType": thing}).encode())
    with pytest.raises(RegistryError) as info:
        odd.resolve()
    assert info.value.message.endswith(f"/odd/app:v1 has media type {thing} and is not an image")
    assert (
        info.value.hint == "point at a container image: an OCI or Docker image manifest, or an index of them"
    )


def test_a_well_formed_single_platform_image_resolves(odd: OddRegistry) -> None:
    body = _manifest(config=_descriptor(OCI_CONFIG, CONFIG), layers=[LAYER])
    odd.serve(OCI_MANIFEST, body)
    image = odd.resolve()
    assert image.digest == _digest(body)
    assert [str(p.platform) for p in image.selected] == ["linux/amd64"]
    assert image.selected[0].layers[0].digest == LAYER["digest"]
    assert image.fetched == {_digest(CONFIG): CONFIG}

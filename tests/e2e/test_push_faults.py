"""The push stage survives transient registry faults: the real ``soci push`` (V1) is run again, and the
project's own push of a SOCI-enabled image (V2) retries the request, both through the fault proxy between the
tool and a real registry. Permanent faults stop at once; a fault that does not go away ends in one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import LayerSpec, build_image
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.core.models import SOCI_INDEX_DIGEST_ANNOTATION, SOCI_INDEX_V1, SOCI_INDEX_V2
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci

UPLOAD = r"/blobs/uploads/"


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


@pytest.fixture
def image_ref(tmp_path: Path, registry: RegistryServer, client: RegistryClient, request) -> Reference:
    image = build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed_for(request)), LayerSpec(64 * 1024, seed=1)])
    return push(registry, client, f"faults/{request.node.name[5:40].replace('_', '-')}", image)


def run_index(soci_bin: str, ref: Reference, proxy: HttpProxy, tmp_path: Path, *extra: str) -> Any:
    via = Reference(proxy.host, ref.repository, digest=ref.digest)
    return run_cli(
        "index", str(via), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(tmp_path / "w"),
        "--json", *extra,
    )  # fmt: skip


def by_soci(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    """The requests soci made (Go's HTTP client), not soci-wrapper's own."""
    return [r for r in requests if not (r.header("user-agent") or "").startswith("soci-wrapper/")]


def assert_v1_index(client: RegistryClient, ref: Reference, report: dict[str, Any]) -> None:
    found = client.get_referrers(ref, ref.digest or "", artifact_type=SOCI_INDEX_V1)
    assert [f.digest for f in found] == [report["indexes"][0]["soci_index_digest"]]
    doc = client.get_manifest(ref, found[0].digest).json()
    for ztoc in doc["layers"]:
        assert client.blob_exists(ref, ztoc["digest"])


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        ("500 on an upload PUT", 2),
        ("503 on a blob HEAD", 1),  # oras-go, inside soci, retries a HEAD by itself
        ("connection cut mid-upload", 2),
        ("500 on a manifest PUT", 1),  # and a manifest PUT (its body can be sent again)
    ],
)
def test_v1_soci_push_survives_a_transient_fault(
    tmp_path: Path, client: RegistryClient, image_ref: Reference, soci_bin: str, fault: str, attempts: int
) -> None:
    with HttpProxy(image_ref.registry) as proxy:
        if fault == "500 on an upload PUT":
            proxy.inject_status(UPLOAD, 500, method="PUT")
        elif fault == "503 on a blob HEAD":
            proxy.inject_status(r"/blobs/sha256:", 503, method="HEAD")
        elif fault == "500 on a manifest PUT":
            proxy.inject_status(r"/manifests/", 500, method="PUT")
        else:
            proxy.cut_request_after(UPLOAD, 64 * 1024, method="PUT")
        proc = run_index(soci_bin, image_ref, proxy, tmp_path)
        requests = proxy.requests
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["push"]["tool"] == "soci push"
    assert report["push"]["attempts"] == attempts, proc.stderr
    faulted = [r for r in requests if r.injected or r.cut]
    assert len(faulted) == 1 and by_soci(faulted) == faulted  # the fault hit soci's push, once
    if fault == "500 on a manifest PUT":  # oras-go put the index manifest again, in the same soci push
        puts = [r for r in by_soci(requests) if r.method == "PUT" and "/manifests/" in r.path]
        assert puts[0].injected and puts[1].path == puts[0].path and puts[1].status == 201, puts
    if attempts > 1:
        assert proc.stderr.count("warning: soci push:") == 1  # one short line for the retry
    assert_v1_index(client, image_ref, report)


def test_v1_persistent_500_ends_in_one_line(
    tmp_path: Path, client: RegistryClient, image_ref: Reference, soci_bin: str
) -> None:
    with HttpProxy(image_ref.registry) as proxy:
        proxy.inject_status(UPLOAD, 500, method="PUT", times=1000)
        proc = run_index(soci_bin, image_ref, proxy, tmp_path)
        puts = [r for r in by_soci(proxy.requests) if r.method == "PUT" and UPLOAD in r.path]
    assert proc.returncode == 7, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("soci-wrapper: error:")]
    assert len(errors) == 1
    assert "status code 500" in errors[0] and "(after 4 attempts over" in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 7
    assert len(puts) >= 4  # every attempt reached the upload
    assert client.get_referrers(image_ref, image_ref.digest or "", artifact_type=SOCI_INDEX_V1) == []
    assert list((tmp_path / "w").iterdir()) == []


def test_v1_permanent_refusal_is_not_retried(
    tmp_path: Path, client: RegistryClient, image_ref: Reference, soci_bin: str
) -> None:
    with HttpProxy(image_ref.registry) as proxy:
        denied = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
        proxy.inject_status(UPLOAD, 403, method="POST", times=1000, body=denied)
        proc = run_index(soci_bin, image_ref, proxy, tmp_path)
        posts = [r for r in by_soci(proxy.requests) if r.method == "POST"]
    assert proc.returncode == 3, proc.stderr  # authentication/authorisation, not "soci failed"
    assert "warning: soci push:" not in proc.stderr
    assert len(posts) >= 1
    assert json.loads(proc.stdout)["exit_code"] == 3


def test_v2_push_survives_a_500_on_an_upload(
    tmp_path: Path, client: RegistryClient, image_ref: Reference, soci_bin: str
) -> None:
    with HttpProxy(image_ref.registry) as proxy:
        proxy.inject_status(UPLOAD, 500, method="PUT")
        proc = run_index(soci_bin, image_ref, proxy, tmp_path, "--soci-version", "V2", "--output-tag", "soci")
        injected = [r for r in proxy.requests if r.injected]
    assert proc.returncode == 0, proc.stderr
    assert len(injected) == 1
    out = client.get_manifest(image_ref, "soci").json()
    soci_index = next(m for m in out["manifests"] if m.get("artifactType") == SOCI_INDEX_V2)
    image = next(m for m in out["manifests"] if m.get("artifactType") != SOCI_INDEX_V2)
    annotated = client.get_manifest(image_ref, image["digest"]).json()
    assert annotated["annotations"][SOCI_INDEX_DIGEST_ANNOTATION] == soci_index["digest"]
    for ztoc in client.get_manifest(image_ref, soci_index["digest"]).json()["layers"]:
        assert client.blob_exists(image_ref, ztoc["digest"])

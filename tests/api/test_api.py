"""``wrapper.api`` called in-process, as an integration test in a containerd VM would call it: attached to a
running containerd that these tests did not start (the session's ``containerd`` fixture; DaemonOptions'
``containerd_address``, each test in a namespace of its own), a real registry (docker-registry) and the real
soci, found through ``SOCI_BIN``.

What the API reports is checked against what the test knows (the image it built and pushed) and against the
registry and containerd themselves, read without the project's clients.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer, start_registry
from tests.helpers import MIB
from tests.imagefactory import FileSpec, Image, LayerSpec, build_image, push_image
from wrapper import api
from wrapper.api import (
    DaemonOptions,
    ExitCode,
    IndexRequest,
    PlainReporter,
    PullOptions,
    Reference,
    VerifyRequest,
)
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"  # FACTS.md: what soci v0.15.0 pushes
ZTOC_LAYER_ANNOTATION = "com.amazon.soci.image-layer-digest"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
# Layer 0 gets a zTOC (over 1 MiB, several files for verify to read through it); layer 1 is under the minimum.
FILES = tuple(FileSpec(f"app/f{i}.bin", size) for i, size in enumerate((1000, 600_000, 900_000, 5, 700_000)))
MIN_LAYER_SIZE = 1 * MIB


@dataclass
class Indexed:
    """An image pushed by the test and indexed through ``api.run_index``, once for the module."""

    ref: Reference
    image: Image
    report: api.IndexReport
    progress: str
    namespace: str
    work: Path


def get(registry: RegistryServer, path: str, accept: str = MANIFEST_TYPES) -> bytes:
    request = urllib.request.Request(f"{registry.url}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
    return body


def manifest(registry: RegistryServer, repository: str, reference: str) -> dict[str, Any]:
    body = get(registry, f"{repository}/manifests/{reference}")
    if reference.startswith("sha256:"):
        assert "sha256:" + hashlib.sha256(body).hexdigest() == reference
    doc: dict[str, Any] = json.loads(body)
    return doc


def attached(containerd: ManagedContainerd, namespace: str, work: Path) -> DaemonOptions:
    return DaemonOptions(containerd_address=containerd.address, namespace=namespace, work_dir=work)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One docker-registry for the module (the index made once is read by several tests)."""
    with start_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


@pytest.fixture(scope="module")
def soci_env(soci_bin: str) -> Iterator[None]:
    """soci through ``$SOCI_BIN`` (no request names it): how a caller outside a checkout points at it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOCI_BIN", soci_bin)
        yield


def push_app(
    tmp: Path, registry: RegistryServer, client: RegistryClient, repository: str, seed: int
) -> Image:
    image = build_image(tmp, [LayerSpec(0, files=FILES, seed=seed), LayerSpec(100 * 1024, seed=seed + 1)])
    push_image(client, Reference(registry.host, repository, tag="v1"), image)
    return image


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory,
    registry: RegistryServer,
    client: RegistryClient,
    containerd: ManagedContainerd,
    soci_env: None,
) -> Indexed:
    tmp = tmp_path_factory.mktemp("api-index")
    image = push_app(tmp, registry, client, "api/app", seed=7301)
    ref = Reference(registry.host, "api/app", tag="v1")  # by tag: the API resolves it
    namespace, work = "api-index", tmp / "work"
    progress = io.StringIO()
    report = api.run_index(
        IndexRequest(ref, pull=PullOptions(min_layer_size=MIN_LAYER_SIZE)),
        daemon=attached(containerd, namespace, work),
        reporter=PlainReporter(progress),
    )
    return Indexed(ref, image, report, progress.getvalue(), namespace, work)


# -- index --------------------------------------------------------------------------------------------------
@pytest.mark.soci
def test_index_report_names_the_image_its_index_and_each_layer(indexed: Indexed) -> None:
    report, image = indexed.report, indexed.image
    assert report.status == "indexed"
    assert report.digest == image.digest and report.platforms == ["linux/amd64"]
    [index] = report.indexes
    assert index.platform == "linux/amd64" and index.manifest_digest == image.digest
    assert index.soci_index_digest.startswith("sha256:") and index.ztocs == 1
    big, small = image.layers
    assert [(x.digest, x.status) for x in index.layers] == [(big.digest, "built"), (small.digest, "skipped")]
    assert index.layers[0].ztoc is not None and index.layers[1].ztoc is None
    assert report.not_indexed == []
    # The reporter given was used: the stages went to it, as they go to stderr on the command line.
    assert "==> resolve" in indexed.progress and "==> push" in indexed.progress
    assert not indexed.work.exists() or list(indexed.work.iterdir()) == []  # nothing left behind


@pytest.mark.soci
def test_the_registry_holds_the_soci_index_of_the_image_manifest(
    indexed: Indexed, registry: RegistryServer
) -> None:
    [index] = indexed.report.indexes
    big = indexed.image.layers[0]
    doc = manifest(registry, "api/app", index.soci_index_digest)  # its digest checked against its bytes
    assert doc["subject"]["digest"] == indexed.image.digest
    assert doc["subject"]["mediaType"] == indexed.image.media_type
    assert doc["config"]["mediaType"] == SOCI_INDEX_V1
    assert [x["annotations"][ZTOC_LAYER_ANNOTATION] for x in doc["layers"]] == [big.digest]
    assert [x["digest"] for x in doc["layers"]] == [index.layers[0].ztoc]
    ztoc = get(registry, f"api/app/blobs/{index.layers[0].ztoc}", accept="*/*")
    assert "sha256:" + hashlib.sha256(ztoc).hexdigest() == index.layers[0].ztoc
    # docker-registry has no referrers API: the index is found under the referrers tag of the manifest.
    tag = "sha256-" + indexed.image.digest.split(":", 1)[1]
    assert [m["digest"] for m in manifest(registry, "api/app", tag)["manifests"]] == [index.soci_index_digest]


@pytest.mark.soci
def test_index_used_the_attached_containerd_and_left_it_running(
    indexed: Indexed, containerd: ManagedContainerd
) -> None:
    assert containerd.pid is not None and Path(f"/proc/{containerd.pid}").exists()
    with ContainerdClient(containerd.address, indexed.namespace) as cd:
        assert cd.images.get(str(indexed.ref)).target.digest == indexed.image.digest
        assert cd.content.exists(indexed.image.layers[0].digest)  # what soci read was pulled there
        assert not cd.content.exists(indexed.image.layers[1].digest)  # under the minimum: never downloaded
        assert cd.leases.list() == []


@pytest.mark.soci
def test_index_many_reports_each_image(
    indexed: Indexed, containerd: ManagedContainerd, tmp_path: Path
) -> None:
    missing = f"{indexed.ref.registry}/api/app:no-such-tag"
    batch = api.run_index_many(
        [IndexRequest(indexed.ref, pull=PullOptions(min_layer_size=MIN_LAYER_SIZE)), missing],
        daemon=attached(containerd, "api-many", tmp_path / "work"),
    )
    assert [(r.image, r.exit_code) for r in batch.images] == [
        (str(indexed.ref), 0),
        (missing, ExitCode.NOT_FOUND),
    ]
    first = batch.images[0].report
    assert first is not None and first.status == "already-indexed"
    assert [i.soci_index_digest for i in first.indexes] == [indexed.report.indexes[0].soci_index_digest]
    assert batch.images[1].report is None and "no-such-tag" in (batch.images[1].error or "")
    assert batch.failed == [batch.images[1]]
    with pytest.raises(api.UsageError) as info:
        api.run_index_many([])
    assert info.value.exit_code == ExitCode.USAGE


# -- verify -------------------------------------------------------------------------------------------------
@pytest.mark.soci
def test_verify_through_the_api(indexed: Indexed, containerd: ManagedContainerd, tmp_path: Path) -> None:
    report = api.run_verify(
        VerifyRequest(indexed.ref, files_per_layer=3),
        daemon=attached(containerd, "api-verify", tmp_path / "w"),
    )
    assert report.status == "valid" and report.exit_code == ExitCode.OK and report.error() is None
    assert report.levels["registry"] == "run" and report.levels["content"] == "run"
    assert report.levels["consumer"].startswith("not run: needs soci-wrapper's own containerd")
    [platform] = report.platforms
    assert platform.index_digest == indexed.report.indexes[0].soci_index_digest
    assert platform.manifest_digest == indexed.image.digest
    big, small = platform.layers
    assert big.digest == indexed.image.layers[0].digest and big.covered and big.files_compared == 3
    assert small.digest == indexed.image.layers[1].digest and not small.covered


def test_verify_of_an_image_without_an_index_is_a_verdict_not_an_exception(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient
) -> None:
    image = push_app(tmp_path, registry, client, "api/none", seed=7401)
    report = api.run_verify(f"{registry.host}/api/none:v1", daemon=DaemonOptions(work_dir=tmp_path / "w"))
    assert report.status == "no-index" and report.exit_code == ExitCode.NO_SOCI_INDEX == 10
    assert report.problems() == [f"linux/amd64: no SOCI index found for manifest {image.digest}"]
    error = report.error()
    assert isinstance(error, api.NoSociIndexError) and error.exit_code == 10


# -- typed errors -------------------------------------------------------------------------------------------
@pytest.mark.soci
def test_a_missing_tag_raises_not_found_with_its_exit_code(
    registry: RegistryServer, containerd: ManagedContainerd, tmp_path: Path, soci_env: None
) -> None:
    work = tmp_path / "work"
    with pytest.raises(api.NotFoundError) as info:
        api.run_index(f"{registry.host}/api/app:v404", daemon=attached(containerd, "api-missing", work))
    assert info.value.exit_code == ExitCode.NOT_FOUND == 4
    assert "v404" in str(info.value) and "\n" not in str(info.value)
    assert not work.exists() or list(work.iterdir()) == []


def test_errors_carry_the_command_lines_exit_codes(registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(api.UsageError) as usage:
        api.run_index("Not A Reference!")  # before any work
    assert usage.value.exit_code == ExitCode.USAGE == 2
    with pytest.raises(api.UsageError):
        IndexRequest(Reference.parse(f"{registry.host}/api/app:v1"), soci_version="V2")  # needs output_tag
    with pytest.raises(api.MissingDependencyError) as missing:
        api.run_index(
            IndexRequest(Reference.parse(f"{registry.host}/api/app:v1"), soci_bin=str(tmp_path / "no"))
        )
    assert missing.value.exit_code == ExitCode.MISSING_DEPENDENCY == 9
    assert issubclass(api.NothingToIndexError, api.SociError)
    assert all(issubclass(getattr(api, n), api.WrapperError) for n in api.__all__ if n.endswith("Error"))


@pytest.mark.soci
def test_an_unreachable_containerd_raises_containerd_error(
    registry: RegistryServer, tmp_path: Path, soci_env: None
) -> None:
    daemon = DaemonOptions(containerd_address=str(tmp_path / "none.sock"))
    with pytest.raises(api.ContainerdError) as info:
        api.run_index(f"{registry.host}/api/app:v1", daemon=daemon)
    assert info.value.exit_code == ExitCode.CONTAINERD == 6


# -- pull and doctor ----------------------------------------------------------------------------------------
def test_pull_into_the_attached_containerd(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, containerd: ManagedContainerd
) -> None:
    image = push_app(tmp_path, registry, client, "api/pull", seed=7501)
    ref = f"{registry.host}/api/pull:v1"
    result = api.run_pull(
        ref, options=PullOptions(full=True), daemon=attached(containerd, "api-pull", tmp_path / "w")
    )
    assert result.digest == image.digest
    with ContainerdClient(containerd.address, "api-pull") as cd:
        assert cd.images.get(ref).target.digest == image.digest
        assert all(cd.content.exists(blob.digest) for blob in (*image.blobs, image.manifest))


@pytest.mark.soci
def test_doctor_through_the_api(containerd: ManagedContainerd, soci_bin: str) -> None:
    report = api.run_doctor(containerd_address=containerd.address, soci_bin=soci_bin)
    assert report.ok
    assert report.containerd["mode"] == "attach" and report.containerd["usable"] is True
    assert containerd.binary_version is not None
    assert report.containerd["version"] == containerd.binary_version.split()[0].lstrip("v")
    assert report.soci["binary"] == str(Path(soci_bin).resolve())

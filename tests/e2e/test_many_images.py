"""Many images in one run: one containerd for all, a few at a time, one failing image does not stop the
others, and the JSON lists every image's result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, our_containerd_processes, push, run_cli, seed_for
from tests.imagefactory import LayerSpec, build_image
from wrapper.core.errors import ExitCode
from wrapper.core.models import SOCI_INDEX_V1
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def test_ten_images_and_a_failing_one(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    base = LayerSpec(1 * MIB, seed=seed)  # every image shares this layer: stored once
    refs = []
    for i in range(10):
        image = build_image(tmp_path, [base, LayerSpec(1 * MIB, seed=seed + 1 + i)])
        refs.append(push(registry, client, f"many/app-{i}", image))
    missing = Reference(registry.host, "many/does-not-exist", tag="v1")
    listing = tmp_path / "images.txt"
    listing.write_text("# the batch\n" + "\n".join(str(r) for r in refs[5:]) + "\n\n")
    work = tmp_path / "work"
    proc = run_cli(
        "index", *(str(r) for r in refs[:5]), str(missing), "--from-file", str(listing), "--soci-bin", soci_bin,
        "--min-layer-size", "1MiB", "--work-dir", str(work), "--max-concurrent-images", "3", "--json",
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == ExitCode.SOME_FAILED, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == ExitCode.SOME_FAILED
    assert (
        doc["summary"]["images"] == 11 and doc["summary"]["indexed"] == 10 and doc["summary"]["failed"] == 1
    )
    results = {r["image"]: r for r in doc["images"]}
    failed = results[str(missing)]
    assert failed["exit_code"] == ExitCode.NOT_FOUND and "not found" in failed["error"]
    for ref in refs:
        result = results[str(ref)]
        assert result["exit_code"] == 0 and result["status"] == "indexed", result
        found = client.get_referrers(ref, ref.digest or "", artifact_type=SOCI_INDEX_V1)
        assert [f.digest for f in found] == [result["indexes"][0]["soci_index_digest"]]
    # One containerd for the run: the shared layer went into its content store once.
    fetched = [
        b
        for r in doc["images"]
        if r.get("pull")
        for b in r["pull"]["blobs"]
        if b["digest"] == refs_base(refs, client)
    ]
    assert sum(1 for b in fetched if b["action"] == "fetched") == 1, fetched
    assert "containerd" in doc["stages"]
    assert f"[6/11 {missing.repository}] failed:" in proc.stderr
    assert our_containerd_processes(work) == [] and (not work.exists() or list(work.iterdir()) == [])


def refs_base(refs: list[Reference], client: RegistryClient) -> str:
    """The digest of the layer every image shares (the first layer of each manifest)."""
    firsts = {client.get_manifest(ref).json()["layers"][0]["digest"] for ref in refs}
    assert len(firsts) == 1
    return str(firsts.pop())


def test_a_rerun_of_the_batch_does_nothing(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    refs = [
        push(registry, client, f"many/again-{i}", build_image(tmp_path, [LayerSpec(MIB, seed=seed + i)]))
        for i in range(3)
    ]
    args = ["index", *(str(r) for r in refs), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--json"]
    first = run_cli(*args, "--work-dir", str(tmp_path / "w1"))
    assert first.returncode == 0, first.stderr
    again = run_cli(*args, "--work-dir", str(tmp_path / "w2"))
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["summary"]["already_indexed"] == 3
    assert "containerd" not in doc["stages"]  # nothing needed it
    assert not (tmp_path / "w2").exists() or list((tmp_path / "w2").iterdir()) == []

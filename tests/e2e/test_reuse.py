"""zTOC reuse with the real soci: zTOCs from the cache or from another image's SOCI index are handed to soci
(its content store + rebuild-db), their layers are not pulled, and the index is the same as one built from
scratch (``--force --no-reuse``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import AMD64, ARM64, Image, LayerSpec, build_image, index_of, push_image
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

pytestmark = pytest.mark.soci


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def index(soci_bin: str, ref: Reference, work: Path, *extra: str) -> dict[str, Any]:
    proc = run_cli(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work), "--json",
        *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert not work.exists() or list(work.iterdir()) == []
    result["stderr"] = proc.stderr  # not part of the report: kept here for the tests
    return result


def layers(report: dict[str, Any], platform: str = "linux/amd64") -> dict[str, dict[str, Any]]:
    entry = next(i for i in report["indexes"] if i["platform"] == platform)
    return {layer["digest"]: layer for layer in entry["layers"]}


def pulled(report: dict[str, Any]) -> set[str]:
    return {b["digest"] for b in report["pull"]["blobs"] if b["kind"] == "layer" and b["action"] == "fetched"}


def ztoc_list(
    client: RegistryClient, ref: Reference, report: dict[str, Any], platform: str = "linux/amd64"
) -> list[str]:
    entry = next(i for i in report["indexes"] if i["platform"] == platform)
    doc = client.get_manifest(ref, entry["soci_index_digest"]).json()
    return [layer["digest"] for layer in doc["layers"]]


def two_builds(tmp_path: Path, seed: int) -> tuple[Image, Image]:
    """Build 1 and build 2 of an app: the same base layers, a new top layer."""
    base = [
        LayerSpec(2 * MIB, seed=seed),
        LayerSpec(3 * MIB, seed=seed + 1),
        LayerSpec(64 * 1024, seed=seed + 2),
    ]
    first = build_image(tmp_path, [*base, LayerSpec(2 * MIB, seed=seed + 3)])
    second = build_image(tmp_path, [*base, LayerSpec(2 * MIB, seed=seed + 4)])
    return first, second


def test_reuse_from_the_cache(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    first, second = two_builds(tmp_path, seed_for(request))
    ref1 = push(registry, client, "reuse/cache", first)
    ref2 = push(registry, client, "reuse/cache", second)
    cache = tmp_path / "cache"

    cold = index(soci_bin, ref1, tmp_path / "w", "--cache-dir", str(cache))
    assert {x["status"] for x in layers(cold).values() if x["size"] >= MIB} == {"built"}
    assert len(list((cache / "blobs" / "sha256").iterdir())) == 3  # its three zTOCs, kept

    warm = index(soci_bin, ref2, tmp_path / "w", "--cache-dir", str(cache))
    got = layers(warm)
    shared, new = [x.digest for x in second.layers[:2]], second.layers[3].digest
    assert [got[d]["status"] for d in shared] == ["reused", "reused"]
    assert [got[d]["source"] for d in shared] == ["cache", "cache"]
    assert got[new]["status"] == "built" and got[new]["source"] is None
    assert pulled(warm) == {new}  # the reused layers were not downloaded
    assert "2 of 3 zTOCs found; their layers are not pulled" in warm["stderr"]  # the progress says so
    assert "zTOCs found" not in cold["stderr"]  # and only when it found some

    scratch = index(soci_bin, ref2, tmp_path / "w", "--force", "--no-reuse")
    assert {x["status"] for x in layers(scratch).values() if x["size"] >= MIB} == {"built"}
    assert ztoc_list(client, ref2, warm) == ztoc_list(client, ref2, scratch)
    assert warm["indexes"][0]["soci_index_digest"] == scratch["indexes"][0]["soci_index_digest"]


def test_reuse_from_the_previous_build_in_the_registry(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    first, second = two_builds(tmp_path, seed_for(request))
    ref1 = push(registry, client, "reuse/registry", first)
    ref2 = push(registry, client, "reuse/registry", second)
    index(soci_bin, ref1, tmp_path / "w")

    warm = index(soci_bin, ref2, tmp_path / "w", "--reuse-from", str(ref1))
    got = layers(warm)
    assert [got[x.digest]["source"] for x in second.layers[:2]] == [f"registry {ref1}"] * 2
    assert got[second.layers[3].digest]["status"] == "built"
    assert pulled(warm) == {second.layers[3].digest}

    scratch = index(soci_bin, ref2, tmp_path / "w", "--force", "--no-reuse")
    assert ztoc_list(client, ref2, warm) == ztoc_list(client, ref2, scratch)


def test_reuse_on_several_platforms(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    base = {p: LayerSpec(2 * MIB, seed=seed + i) for i, p in enumerate(("amd64", "arm64"))}
    old = index_of(
        [
            build_image(tmp_path, [base["amd64"], LayerSpec(2 * MIB, seed=seed + 10)], platform=AMD64),
            build_image(tmp_path, [base["arm64"], LayerSpec(2 * MIB, seed=seed + 11)], platform=ARM64),
        ]
    )
    new = index_of(
        [
            build_image(tmp_path, [base["amd64"], LayerSpec(2 * MIB, seed=seed + 20)], platform=AMD64),
            build_image(tmp_path, [base["arm64"], LayerSpec(2 * MIB, seed=seed + 21)], platform=ARM64),
        ]
    )
    ref_old = push(registry, client, "reuse/multi", old)
    ref_new = push(registry, client, "reuse/multi", new)
    cache = tmp_path / "cache"
    index(soci_bin, ref_old, tmp_path / "w", "--all-platforms", "--cache-dir", str(cache))
    warm = index(soci_bin, ref_new, tmp_path / "w", "--all-platforms", "--cache-dir", str(cache))
    scratch = index(soci_bin, ref_new, tmp_path / "w", "--all-platforms", "--force", "--no-reuse")
    for image, platform in zip(new.images, ("linux/amd64", "linux/arm64/v8"), strict=True):
        got = layers(warm, platform)
        assert got[image.layers[0].digest]["status"] == "reused"
        assert got[image.layers[1].digest]["status"] == "built"
        assert ztoc_list(client, ref_new, warm, platform) == ztoc_list(client, ref_new, scratch, platform)


def test_a_damaged_cache_entry_is_ignored(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    first, second = two_builds(tmp_path, seed_for(request))
    ref1 = push(registry, client, "reuse/damaged", first)
    ref2 = push(registry, client, "reuse/damaged", second)
    cache = tmp_path / "cache"
    index(soci_bin, ref1, tmp_path / "w", "--cache-dir", str(cache))
    for blob in (cache / "blobs" / "sha256").iterdir():
        blob.write_bytes(blob.read_bytes()[:-10])  # truncated: the digest no longer matches
    warm = index(soci_bin, ref2, tmp_path / "w", "--cache-dir", str(cache))
    # not from the damaged cache (build 1's index in the same repository may serve instead)
    assert all(x["source"] != "cache" for x in layers(warm).values())
    scratch = index(soci_bin, ref2, tmp_path / "w", "--force", "--no-reuse")
    assert ztoc_list(client, ref2, warm) == ztoc_list(client, ref2, scratch)


def test_two_runs_share_a_cache(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    first, second = two_builds(tmp_path, seed_for(request))
    refs = [push(registry, client, "reuse/shared-a", first), push(registry, client, "reuse/shared-b", second)]
    cache = tmp_path / "cache"
    results: list[dict[str, Any]] = []

    def run(i: int) -> None:
        results.append(index(soci_bin, refs[i], tmp_path / f"w{i}", "--cache-dir", str(cache)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 2
    assert len(list((cache / "blobs" / "sha256").iterdir())) == 4  # 2 shared + 1 each
    assert not [p for p in (cache / "blobs" / "sha256").iterdir() if p.name.startswith(".")]


def test_v2_reuse_from_the_cache_and_from_a_soci_enabled_image(
    tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    first, second = two_builds(tmp_path, seed_for(request))
    ref1 = push(registry, client, "reuse/v2", first)
    ref2 = push(registry, client, "reuse/v2", second)
    cache = tmp_path / "cache"
    v2 = ("--soci-version", "V2")
    index(soci_bin, ref1, tmp_path / "w", *v2, "--output-tag", "build1-soci", "--cache-dir", str(cache))

    from_cache = index(
        soci_bin, ref2, tmp_path / "w", *v2, "--output-tag", "build2-soci", "--cache-dir", str(cache)
    )
    got = layers(from_cache)
    assert [got[x.digest]["source"] for x in second.layers[:2]] == ["cache", "cache"]
    assert got[second.layers[3].digest]["status"] == "built"
    assert pulled(from_cache) == {second.layers[3].digest}

    previous = Reference(ref1.registry, ref1.repository, tag="build1-soci")
    from_registry = index(
        soci_bin, ref2, tmp_path / "w", *v2, "--output-tag", "build2b-soci", "--reuse-from", str(previous)
    )
    got = layers(from_registry)
    assert [got[x.digest]["source"] for x in second.layers[:2]] == [f"registry {previous}"] * 2

    scratch = index(
        soci_bin, ref2, tmp_path / "w", *v2, "--output-tag", "build2c-soci", "--force", "--no-reuse"
    )
    expected = ztoc_list(client, ref2, scratch)
    assert ztoc_list(client, ref2, from_cache) == expected == ztoc_list(client, ref2, from_registry)
    digests = {r["indexes"][0]["soci_index_digest"] for r in (from_cache, from_registry, scratch)}
    assert len(digests) == 1  # the same SOCI index, whichever way its zTOCs came


@pytest.mark.parametrize("kind", ["distribution", "zot"])
def test_reuse_found_in_the_same_repository(
    kind: str, tmp_path: Path, registry: RegistryServer, client: RegistryClient, soci_bin: str, request
) -> None:
    """No cache, no --reuse-from: the previous build's SOCI index is found in the repository (through its
    sha256-<hex> referrers tag on distribution, through the tags and the referrers API on zot)."""
    server: RegistryServer = registry if kind == "distribution" else request.getfixturevalue("zot_registry")
    first, second = two_builds(tmp_path, seed_for(request))
    ref1 = push(server, client, "reuse/found", first)
    ref2 = Reference(server.host, "reuse/found", tag="v2").with_digest(
        push_image(client, Reference(server.host, "reuse/found", tag="v2"), second)
    )
    index(soci_bin, ref1, tmp_path / "w")
    tags = client.list_tags(ref1)
    # zot has the referrers API: soci push creates no fallback tag there; distribution has none, so it does
    assert any(t.startswith("sha256-") for t in tags) == (kind == "distribution")
    assert index(soci_bin, ref1, tmp_path / "w")["status"] == "already-indexed"  # found either way

    warm = index(soci_bin, ref2, tmp_path / "w")
    got = layers(warm)
    sources = {got[x.digest]["source"] for x in second.layers[:2]}
    assert len(sources) == 1 and sources.pop().startswith(f"registry {server.host}/reuse/found:"), got
    assert got[second.layers[3].digest]["status"] == "built"
    assert pulled(warm) == {second.layers[3].digest}
    scratch = index(soci_bin, ref2, tmp_path / "w", "--force", "--no-reuse")
    assert ztoc_list(client, ref2, warm) == ztoc_list(client, ref2, scratch)

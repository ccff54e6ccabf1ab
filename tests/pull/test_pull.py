"""Pulling into a real containerd from real registries (Debian's docker-registry on loopback)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import ECR_HOST, RegistryServer, free_port
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import (
    AMD64,
    ARM64,
    LayerSpec,
    build_image,
    build_index,
)
from tests.proxy import HttpProxy, RecordedRequest
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import GC_REF
from wrapper.core.errors import AuthError, ExitCode, NotFoundError, RegistryError
from wrapper.core.models import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Platform
from wrapper.core.options import PullOptions
from wrapper.core.reference import Reference
from wrapper.image.pull import BLOB_ATTEMPTS, SOURCE_LABEL, pull
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient

THRESHOLD = 1 * MIB  # tests use a small --min-layer-size so that images stay small


@pytest.fixture
def anon_client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        yield client


@pytest.fixture
def private_image(tmp_path: Path, tls_registry: RegistryServer, request) -> Reference:
    """A 2 MiB single-layer image in the TLS + htpasswd registry, pushed as the test user (not as AWS)."""
    assert tls_registry.username and tls_registry.password and tls_registry.ca_file
    image = build_image(tmp_path / "private", [LayerSpec(2 * MIB, seed=seed_for(request))])
    creds = CredentialStore(
        explicit={tls_registry.host: Credentials(tls_registry.username, tls_registry.password)}
    )
    with RegistryClient(creds, ca_file=tls_registry.ca_file) as client:
        return push(tls_registry, client, "private/app", image)


def three_layers(seed: int) -> list[LayerSpec]:
    return [
        LayerSpec(3 * MIB, seed=seed),
        LayerSpec(200 * 1024, seed=seed + 1),  # under the threshold: sparse pulls skip it
        LayerSpec(int(1.5 * MIB), seed=seed + 2),
    ]


def stored(client: ContainerdClient) -> set[str]:
    return set(client.content.list_digests())


def test_full_pull_stores_exactly_the_image(
    tmp_path: Path,
    registry: RegistryServer,
    anon_client: RegistryClient,
    containerd_client: ContainerdClient,
    ctr,
    request,
) -> None:
    image = build_image(tmp_path, three_layers(seed_for(request)))
    ref = push(registry, anon_client, "full/app", image)

    result = pull(anon_client, containerd_client, ref, PullOptions(full=True, min_layer_size=THRESHOLD))

    expected = {b.digest for b in image.blobs} | {image.digest}
    assert stored(containerd_client) == expected
    for blob in image.blobs:
        info = containerd_client.content.info(blob.digest)
        assert info.size == blob.size
        assert info.labels[f"{SOURCE_LABEL}.{registry.host}"] == "full/app"
    check = ctr("images", "check")
    assert str(ref) in check.stdout and "complete" in check.stdout, check.stdout
    assert result.summary()["blobs_skipped"]["count"] == 0
    # every write happened under a lease that is gone now
    assert containerd_client.leases.list() == []


def test_sparse_pull_skips_small_layers_and_labels_for_gc(
    tmp_path: Path,
    registry: RegistryServer,
    anon_client: RegistryClient,
    containerd_client: ContainerdClient,
    request,
) -> None:
    image = build_image(tmp_path, three_layers(seed_for(request)))
    ref = push(registry, anon_client, "sparse/app", image)

    result = pull(anon_client, containerd_client, ref, PullOptions(min_layer_size=THRESHOLD))

    small = image.layers[1]
    assert stored(containerd_client) == ({b.digest for b in image.blobs} | {image.digest}) - {small.digest}
    summary = result.summary()
    assert summary["blobs_skipped"] == {"count": 1, "bytes": small.size}
    assert summary["bytes_downloaded"] >= sum(x.size for x in image.layers) - small.size
    labels = containerd_client.content.info(image.digest).labels
    assert labels[f"{GC_REF}.config"] == image.config.digest
    assert [labels[f"{GC_REF}.l.{i}"] for i in range(3)] == [x.digest for x in image.layers]
    record = containerd_client.images.get(str(ref))
    assert record.target.digest == image.digest
    # a layer of exactly the threshold is downloaded (soci indexes layers >= the minimum)
    exact = pull(anon_client, containerd_client, ref, PullOptions(min_layer_size=image.layers[2].size))
    assert {b.digest for b in exact.blobs if b.action == "skipped"} == {image.layers[1].digest}


def test_multi_platform_selection(
    tmp_path: Path,
    registry: RegistryServer,
    anon_client: RegistryClient,
    containerd_client: ContainerdClient,
    request,
) -> None:
    index = build_index(tmp_path, [LayerSpec(2 * MIB, seed=seed_for(request))])
    ref = push(registry, anon_client, "multi/app", index)
    amd, arm = index.images

    result = pull(
        anon_client, containerd_client, ref, PullOptions(platforms=(ARM64,), min_layer_size=THRESHOLD)
    )
    have = stored(containerd_client)
    # every platform's manifest and config, the index, and the chosen platform's layers only
    assert {index.digest, amd.digest, arm.digest, amd.config.digest, arm.config.digest} <= have
    assert arm.layers[0].digest in have and amd.layers[0].digest not in have
    assert [str(p.platform) for p in result.selected] == ["linux/arm64/v8"]
    labels = containerd_client.content.info(index.digest).labels
    assert {labels[f"{GC_REF}.m.0"], labels[f"{GC_REF}.m.1"]} == {amd.digest, arm.digest}

    result = pull(
        anon_client, containerd_client, ref, PullOptions(all_platforms=True, min_layer_size=THRESHOLD)
    )
    assert amd.layers[0].digest in stored(containerd_client)
    assert len(result.selected) == 2

    with pytest.raises(NotFoundError) as info:
        pull(anon_client, containerd_client, ref, PullOptions(platforms=(Platform("linux", "s390x"),)))
    assert "linux/s390x" in str(info.value) and "linux/amd64" in str(info.value)


def test_single_platform_mismatch_names_both(
    tmp_path: Path,
    registry: RegistryServer,
    anon_client: RegistryClient,
    containerd_client: ContainerdClient,
    request,
) -> None:
    image = build_image(tmp_path, [LayerSpec(64 * 1024, seed=seed_for(request))], platform=ARM64)
    ref = push(registry, anon_client, "arm/app", image)
    with pytest.raises(NotFoundError) as info:
        pull(anon_client, containerd_client, ref, PullOptions(platforms=(AMD64,)))
    assert "linux/amd64" in str(info.value) and "linux/arm64" in str(info.value)
    assert "\n" not in str(info.value)


def test_docker_media_types(
    tmp_path: Path,
    registry: RegistryServer,
    anon_client: RegistryClient,
    containerd_client: ContainerdClient,
    ctr,
    request,
) -> None:
    index = build_index(tmp_path, three_layers(seed_for(request)), oci=False)
    assert index.media_type == DOCKER_MANIFEST_LIST
    assert {image.media_type for image in index.images} == {DOCKER_MANIFEST}
    ref = push(registry, anon_client, "docker/app", index)
    pull(anon_client, containerd_client, ref, PullOptions(full=True, all_platforms=True))

    # containerd holds the manifest list, every platform's manifest, config and layers, and nothing else
    expected = {index.digest} | {image.digest for image in index.images}
    expected |= {blob.digest for image in index.images for blob in image.blobs}
    assert stored(containerd_client) == expected
    for image in index.images:
        for blob in image.blobs:
            assert containerd_client.content.info(blob.digest).size == blob.size
    record = containerd_client.images.get(str(ref))
    assert (record.target.digest, record.target.media_type) == (index.digest, DOCKER_MANIFEST_LIST)
    assert index.digest in {i.target.digest for i in containerd_client.images.list()}

    # ctr agrees that the image (this host's platform of it) is complete: every required blob is present.
    # (`ctr images check -q` lists only images that are also unpacked; a pull for soci never unpacks.)
    check = ctr("images", "check")
    # columns: REF TYPE DIGEST STATUS ("complete (4/4)", "incomplete (3/4)", ...) SIZE UNPACKED
    row = re.compile(
        rf"^{re.escape(str(ref))}\s+(?P<type>\S+)\s+(?P<digest>\S+)\s+"
        r"(?P<status>\w+) \((?P<present>\d+)/(?P<required>\d+)\)",
        re.MULTILINE,
    )
    rows = list(row.finditer(check.stdout))
    assert len(rows) == 1, check.stdout
    found = rows[0]
    assert (found["type"], found["digest"], found["status"]) == (
        DOCKER_MANIFEST_LIST,
        index.digest,
        "complete",
    )
    # ctr counts what the host platform's manifest needs (its manifest list and manifest being readable):
    # its config and its three layers
    assert (int(found["present"]), int(found["required"])) == (4, 4), check.stdout


def test_schema1_is_refused(
    tmp_path: Path,
    schema1_registry: RegistryServer,
    anon_client: RegistryClient,
    containerd_client: ContainerdClient,
) -> None:
    from tests.imagefactory import push_schema1_image

    ref = Reference(schema1_registry.host, "old/app", tag="v1")
    push_schema1_image(anon_client, ref, tmp_path, tag="v1")
    with pytest.raises(RegistryError, match="schema 1"):
        pull(anon_client, containerd_client, ref, PullOptions())
    assert stored(containerd_client) == set()


def test_basic_auth_over_tls(
    tmp_path: Path, tls_registry: RegistryServer, containerd_client: ContainerdClient, request
) -> None:
    assert tls_registry.username and tls_registry.password and tls_registry.ca_file
    good = CredentialStore(
        explicit={tls_registry.host: Credentials(tls_registry.username, tls_registry.password)}
    )
    image = build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed_for(request))])
    with RegistryClient(good, ca_file=tls_registry.ca_file) as client:
        ref = push(tls_registry, client, "private/app", image)
        pull(client, containerd_client, ref, PullOptions(min_layer_size=THRESHOLD))
    assert image.layers[0].digest in stored(containerd_client)

    bad = CredentialStore(explicit={tls_registry.host: Credentials(tls_registry.username, "wrong")})
    with RegistryClient(bad, ca_file=tls_registry.ca_file) as client, pytest.raises(AuthError) as info:
        pull(client, containerd_client, ref, PullOptions())
    assert tls_registry.host in str(info.value)


def test_resume_after_cut_asks_for_the_rest(
    tmp_path: Path, registry: RegistryServer, containerd_client: ContainerdClient, request
) -> None:
    image = build_image(tmp_path, [LayerSpec(24 * MIB, seed=seed_for(request))])
    layer = image.layers[0]
    with RegistryClient(CredentialStore(use_ecr=False)) as direct:
        ref = push(registry, direct, "resume/app", image)
    with HttpProxy(registry.host) as proxy:
        proxy.cut_after(f"/blobs/{layer.digest}", 7 * MIB, method="GET")
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        with RegistryClient(CredentialStore(use_ecr=False)) as client:
            result = pull(client, containerd_client, via, PullOptions(min_layer_size=THRESHOLD))
        gets = [r for r in proxy.requests if r.method == "GET" and layer.digest in r.path]
    assert len(gets) == 2, [r.path for r in gets]
    assert gets[0].header("Range") is None
    resumed_at = int(str(gets[1].header("Range")).removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 7 * MIB
    served = sum(r.body_bytes for r in gets)
    assert served < layer.size * 1.35, (served, layer.size)
    record = next(b for b in result.blobs if b.digest == layer.digest)
    assert record.resumed_from == resumed_at
    assert containerd_client.content.info(layer.digest).size == layer.size


def _range_starts(gets: list[RecordedRequest]) -> list[int | None]:
    """The first byte each GET asked for (None: the whole blob)."""
    ranges = [r.header("Range") for r in gets]
    return [None if r is None else int(r.removeprefix("bytes=").rstrip("-")) for r in ranges]


def test_resume_starts_at_the_exact_byte_the_cut_reached(
    tmp_path: Path, registry: RegistryServer, containerd_client: ContainerdClient, request
) -> None:
    """A transfer cut between two 1 MiB marks resumes at the byte it reached, not at the last mark."""
    image = build_image(tmp_path, [LayerSpec(12 * MIB, seed=seed_for(request))])
    layer = image.layers[0]
    cut = 5 * MIB + 12_345
    with RegistryClient(CredentialStore(use_ecr=False)) as direct:
        ref = push(registry, direct, "resume-exact/app", image)
    with HttpProxy(registry.host) as proxy:
        proxy.cut_after(f"/blobs/{layer.digest}", cut, method="GET")
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        with RegistryClient(CredentialStore(use_ecr=False)) as client:
            result = pull(client, containerd_client, via, PullOptions(min_layer_size=THRESHOLD))
        gets = [r for r in proxy.requests if r.method == "GET" and layer.digest in r.path]
    assert _range_starts(gets) == [None, cut]
    assert [r.body_bytes for r in gets] == [cut, layer.size - cut]  # not one byte fetched twice
    record = next(b for b in result.blobs if b.digest == layer.digest)
    assert record.resumed_from == cut
    assert record.bytes_downloaded == layer.size
    assert containerd_client.content.info(layer.digest).size == layer.size


def test_cuts_before_every_mib_mark_still_progress(
    tmp_path: Path, registry: RegistryServer, containerd_client: ContainerdClient, request
) -> None:
    """Every GET of the layer breaks after 600 KiB, before the first 1 MiB mark: each attempt resumes where
    the last one broke, so the pull completes within its attempts instead of starting over each time."""
    image = build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed_for(request))])
    layer = image.layers[0]
    step = 600 * 1024
    with RegistryClient(CredentialStore(use_ecr=False)) as direct:
        ref = push(registry, direct, "resume-steps/app", image)
    with HttpProxy(registry.host) as proxy:
        proxy.cut_after(f"/blobs/{layer.digest}", step, method="GET", times=100)
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        with RegistryClient(CredentialStore(use_ecr=False)) as client:
            pull(client, containerd_client, via, PullOptions(min_layer_size=THRESHOLD))
        gets = [r for r in proxy.requests if r.method == "GET" and layer.digest in r.path]
    starts = list(range(0, layer.size, step))
    assert len(starts) <= BLOB_ATTEMPTS
    assert _range_starts(gets) == [None, *starts[1:]]
    assert sum(r.body_bytes for r in gets) == layer.size
    assert containerd_client.content.info(layer.digest).size == layer.size


# -- the command line ------------------------------------------------------------------------------------


def test_cli_pull_json_and_plain_progress(
    tmp_path: Path,
    registry: RegistryServer,
    anon_client: RegistryClient,
    containerd,
    containerd_namespace: str,
    request,
) -> None:
    image = build_image(tmp_path, three_layers(seed_for(request)))
    ref = push(registry, anon_client, "cli/app", image)
    proc = run_cli(
        "pull",
        str(ref),
        "--containerd-address",
        containerd.address,
        "--namespace",
        containerd_namespace,
        "--min-layer-size",
        "1MiB",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["digest"] == image.digest
    assert summary["platforms"] == ["linux/amd64"]
    assert summary["blobs_skipped"]["count"] == 1
    assert summary["blobs_fetched"]["count"] == 4  # 2 layers, config, manifest
    # not a terminal: one plain line per blob started and finished
    assert proc.stderr.count("start ") >= 2 and proc.stderr.count("done ") >= 2, proc.stderr
    with ContainerdClient(containerd.address, containerd_namespace) as client:
        assert client.images.get(str(ref)).target.digest == image.digest


def test_cli_pull_with_password_stdin_and_wrong_password(
    tmp_path: Path,
    tls_registry: RegistryServer,
    containerd,
    containerd_namespace: str,
    private_image: Reference,
) -> None:
    ref = private_image
    assert tls_registry.username and tls_registry.password and tls_registry.ca_file
    common = [
        "pull",
        str(ref),
        "--containerd-address",
        containerd.address,
        "--namespace",
        containerd_namespace,
        "--ca-file",
        tls_registry.ca_file,
        "--username",
        tls_registry.username,
        "--password-stdin",
        "--quiet",
    ]
    ok = run_cli(*common, stdin=tls_registry.password + "\n")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(*common, stdin="not-the-password\n")
    assert bad.returncode == 3, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and tls_registry.host in lines[0] and "Traceback" not in bad.stderr
    assert "not-the-password" not in bad.stderr


def test_cli_pull_with_docker_config(
    tmp_path: Path,
    tls_registry: RegistryServer,
    containerd,
    containerd_namespace: str,
    private_image: Reference,
) -> None:
    import base64

    ref = private_image
    assert tls_registry.username and tls_registry.password and tls_registry.ca_file
    cfg = tmp_path / "docker"
    cfg.mkdir()
    token = base64.b64encode(f"{tls_registry.username}:{tls_registry.password}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {tls_registry.host: {"auth": token}}}))
    proc = run_cli(
        "pull",
        str(ref),
        "--containerd-address",
        containerd.address,
        "--namespace",
        containerd_namespace,
        "--ca-file",
        tls_registry.ca_file,
        "--min-layer-size",
        "1MiB",  # so the 2 MiB layer is fetched with those credentials too
        "--quiet",
        env={"DOCKER_CONFIG": str(cfg)},
    )
    assert proc.returncode == 0, proc.stderr
    # The image is in containerd: its record, its manifest, and the config and layer that manifest names.
    with ContainerdClient(containerd.address, containerd_namespace) as client:
        assert client.images.get(str(ref)).target.digest == ref.digest
        manifest = json.loads(b"".join(client.content.read(str(ref.digest))))
        wanted = [manifest["config"], *manifest["layers"]]
        assert len(manifest["layers"]) == 1
        assert stored(client) == {str(ref.digest)} | {d["digest"] for d in wanted}
        for descriptor in wanted:
            assert client.content.info(descriptor["digest"]).size == descriptor["size"]


def test_cli_pull_from_ecr_with_token_from_moto(
    tmp_path: Path,
    tls_registry: RegistryServer,
    moto_ecr,
    containerd,
    containerd_namespace: str,
    private_image,
) -> None:
    """moto issues the ECR token; an endpoint override sends the ECR host to the local TLS registry.

    The registry only lets in its htpasswd users, and the CLI is given no credentials at all (an empty docker
    config, no --username): a successful pull means the decoded token reached the registry. The client-level
    test in tests/registry checks the exact Authorization header.
    """
    assert tls_registry.ca_file and private_image.digest
    empty = tmp_path / "empty-docker-config"
    empty.mkdir()
    args = [
        "pull", "--endpoint-override", f"{ECR_HOST}={tls_registry.host}", "--ca-file", tls_registry.ca_file,
        f"{ECR_HOST}/{private_image.repository}@{private_image.digest}", "--containerd-address",
        containerd.address, "--namespace", containerd_namespace, "--json", "--min-layer-size", "1MiB",
    ]  # fmt: skip
    proc = run_cli(*args, env={"DOCKER_CONFIG": str(empty)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digest"] == private_image.digest
    # Without moto's token the same pull fails before it reaches the registry: an AWS endpoint that cannot be
    # reached is "unreachable" (exit 5), like the registry itself, not a refusal of credentials (exit 3).
    dead = f"http://127.0.0.1:{free_port()}"
    refused = run_cli(*args, env={"DOCKER_CONFIG": str(empty), "AWS_ENDPOINT_URL_ECR": dead})
    assert refused.returncode == ExitCode.REGISTRY, refused.stderr
    report = json.loads(refused.stdout)
    assert report == {"error": report["error"], "exit_code": ExitCode.REGISTRY}
    assert report["error"].startswith(f"cannot reach the AWS endpoint to log in to {ECR_HOST}: "), report
    assert dead in report["error"]
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("soci-wrapper: error:")]
    assert errors == [f"soci-wrapper: error: {report['error']}"], refused.stderr
    assert "Traceback" not in refused.stderr


def test_cli_pull_with_credential_helper(
    tmp_path: Path,
    tls_registry: RegistryServer,
    containerd,
    containerd_namespace: str,
    private_image: Reference,
) -> None:
    """A docker config naming a credential helper: the tool runs docker-credential-<name> get."""
    ref = private_image
    assert tls_registry.username and tls_registry.password and tls_registry.ca_file
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked.txt"
    helper = bin_dir / "docker-credential-sociwrappertest"
    answer = json.dumps(
        {"ServerURL": tls_registry.host, "Username": tls_registry.username, "Secret": tls_registry.password}
    )
    helper.write_text(
        f"#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat >> {asked}\necho >> {asked}\necho '{answer}'\n"
    )
    helper.chmod(0o755)
    cfg = tmp_path / "docker"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"credHelpers": {tls_registry.host: "sociwrappertest"}}))
    proc = run_cli(
        "pull", str(ref), "--containerd-address", containerd.address, "--namespace", containerd_namespace,
        "--ca-file", tls_registry.ca_file, "--quiet", "--docker-config", str(cfg),
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert asked.read_text().split() == [tls_registry.host]  # asked once, not once per request


def test_manifest_cut_midway_is_retried(
    tmp_path: Path, registry: RegistryServer, containerd_client: ContainerdClient, request
) -> None:
    image = build_image(tmp_path, [LayerSpec(64 * 1024, seed=seed_for(request))])
    with RegistryClient(CredentialStore(use_ecr=False)) as direct:
        ref = push(registry, direct, "cutmanifest/app", image)
    with HttpProxy(registry.host) as proxy:
        proxy.cut_after("/manifests/", 20, method="GET")
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        with RegistryClient(CredentialStore(use_ecr=False), backoff_seconds=0.01) as client:
            result = pull(client, containerd_client, via, PullOptions(full=True))
        gets = [r for r in proxy.requests if r.method == "GET" and "/manifests/" in r.path]
    assert len(gets) == 2 and gets[0].cut
    assert result.digest == image.digest


@pytest.mark.parametrize("damage", ["flip", "extend"])
def test_blob_with_wrong_content_is_a_registry_error(
    tmp_path: Path, registry: RegistryServer, containerd_client: ContainerdClient, request, damage: str
) -> None:
    """A registry serving other bytes than the digest promises: exit code 5, and not downloaded again."""
    image = build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed_for(request))])
    layer = image.layers[0]
    with RegistryClient(CredentialStore(use_ecr=False)) as direct:
        ref = push(registry, direct, "corrupt/app", image)
    hexdigest = layer.digest.split(":", 1)[1]
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    raw = bytearray(data.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw += b"x"
    data.write_bytes(bytes(raw))
    with HttpProxy(registry.host) as proxy:
        via = Reference(proxy.host, ref.repository, digest=ref.digest)
        with RegistryClient(CredentialStore(use_ecr=False)) as client, pytest.raises(RegistryError) as info:
            pull(client, containerd_client, via, PullOptions(min_layer_size=MIB))
        gets = [r for r in proxy.requests if r.method == "GET" and layer.digest in r.path]
    assert info.value.exit_code == 5
    assert "wrong content" in str(info.value) and layer.digest in str(info.value)
    assert len(gets) == 1
    assert layer.digest not in stored(containerd_client)

"""``verify`` and ``index`` read one environment: the ECR image named by --repo/--digest (or by
SOCI_WRAPPER_REPO/SOCI_WRAPPER_DIGEST), in the region and account of SOCI_WRAPPER_REGION and
SOCI_WRAPPER_ACCOUNT, is the same image for both commands.

The ECR host is sent to a local TLS + htpasswd registry with an endpoint override, and moto issues the ECR
token (the registry lets in only its htpasswd users; the CLI gets no credentials of its own). No AWS_REGION,
AWS_DEFAULT_REGION or AWS_ACCOUNT_ID is set: the region and account can only come from SOCI_WRAPPER_*.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.sociartifacts import push_soci_v1
from tests.fixtures.registry import ECR_ACCOUNT, ECR_HOST, ECR_REGION, MotoEcr, RegistryServer
from tests.helpers import MIB, run_cli, seed_for
from tests.imagefactory import LayerSpec, build_image, push_image
from wrapper.core.reference import Reference
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient

REPO = "team/app"


@pytest.mark.soci
@pytest.mark.parametrize("named_by", ["flags", "environment"])
def test_verify_reads_the_ecr_environment_as_index_does(
    named_by: str,
    tmp_path: Path,
    tls_registry: RegistryServer,
    moto_ecr: MotoEcr,
    monkeypatch: pytest.MonkeyPatch,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    assert tls_registry.username and tls_registry.password and tls_registry.ca_file
    image = build_image(
        tmp_path / "image",
        [LayerSpec(2 * MIB, seed=seed_for(request)), LayerSpec(4096, seed=seed_for(request) + 1)],
    )
    creds = CredentialStore(
        explicit={tls_registry.host: Credentials(tls_registry.username, tls_registry.password)}
    )
    with RegistryClient(creds, ca_file=tls_registry.ca_file) as client:
        where = Reference(tls_registry.host, REPO, tag="v1")
        push_image(client, where, image)
        soci_index = push_soci_v1(client, where, image)

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCOUNT_ID"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty-docker-config"
    empty.mkdir()
    env = {
        "SOCI_WRAPPER_REGION": ECR_REGION,
        "SOCI_WRAPPER_ACCOUNT": ECR_ACCOUNT,
        "DOCKER_CONFIG": str(empty),
    }
    if named_by == "flags":
        image_args = ["--repo", REPO, "--digest", image.digest]
    else:
        image_args = []
        env |= {"SOCI_WRAPPER_REPO": REPO, "SOCI_WRAPPER_DIGEST": image.digest}
    reach = [
        "--endpoint-override",
        f"{ECR_HOST}={tls_registry.host}",
        "--ca-file",
        tls_registry.ca_file,
        "--json",
    ]

    indexed = run_cli(
        "index", *image_args, *reach, "--min-layer-size", "1MiB", "--soci-bin", soci_bin, env=env
    )
    verified = run_cli("verify", *image_args, *reach, "--level", "registry", "--soci-bin", soci_bin, env=env)

    expected = f"{ECR_HOST}/{REPO}@{image.digest}"
    assert indexed.returncode == 0, indexed.stderr
    index_report = json.loads(indexed.stdout)
    assert index_report["status"] == "already-indexed", index_report
    assert index_report["image"] == expected
    assert [i["soci_index_digest"] for i in index_report["indexes"]] == [soci_index]

    # The same image, found with the same index. (The index's zTOCs are placeholders, so the registry level
    # finds them invalid: exit 11 and its problems, not a usage error.)
    assert verified.returncode == 11, verified.stderr
    verify_report = json.loads(verified.stdout)
    assert verify_report["image"] == expected
    assert verify_report["digest"] == index_report["digest"] == image.digest
    assert [p["soci_index_digest"] for p in verify_report["platforms"]] == [soci_index]
    assert verify_report["levels"]["registry"] == "run"
    (problem,) = verify_report["problems"]
    assert f"layer {image.layers[0].digest}: zTOC " in problem and "cannot be decoded" in problem, problem


def test_verify_without_region_names_the_same_missing_flag_as_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Neither command finds a region: the same one line, exit 2, before any network work."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCOUNT_ID"):
        monkeypatch.delenv(name, raising=False)
    digest = "sha256:" + "ab" * 32
    env = {"SOCI_WRAPPER_ACCOUNT": ECR_ACCOUNT}
    index = run_cli("index", "--repo", REPO, "--digest", digest, env=env)
    verify = run_cli("verify", "--repo", REPO, "--digest", digest, env=env)
    assert index.returncode == verify.returncode == 2, (index.stderr, verify.stderr)
    assert index.stderr == verify.stderr == "soci-wrapper: error: --repo needs --region (or AWS_REGION)\n"
    assert index.stdout == verify.stdout == ""

"""Bad input through the real command line: malformed references and flags, programs and sockets that are not
what they claim, registries that refuse or serve what is no image, credentials that do not work.

Each case runs ``soci-wrapper`` in a child process and asserts: exactly one ``soci-wrapper: error: ...`` line,
saying what is wrong (``what``) and what to do about it (``hint``); the documented exit code; no traceback;
nothing left behind (the ``--work-dir`` empty or absent, no containerd whose command line points into it).

The servers (a plain-HTTP docker-registry that also takes schema 1 pushes, a TLS one with htpasswd, a stub
that serves odd manifests, a unix socket that is not containerd) are started once for the module, and only
when a case needs them. Nothing reaches the internet: no AWS_* variable of the caller is passed on, the AWS
endpoints and the one non-loopback registry host point at a loopback port that refuses connections.

Cases marked xfail show a bug in a file outside this change (the reason says which); they are strict, so a
fix makes them pass and the mark must go.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import (
    ECR_ACCOUNT,
    ECR_HOST,
    ECR_REGION,
    TEST_USERNAME,
    RegistryServer,
    start_registry,
    start_tls_registry,
)
from tests.helpers import our_containerd_processes, run_cli
from tests.imagefactory import (
    AMD64,
    ARM64,
    Blob,
    Layer,
    LayerSpec,
    build_image,
    build_index,
    build_layer,
    push_image,
    push_schema1_image,
)
from tests.registry.stub import StubRequest, StubResponse, StubServer
from wrapper.core.errors import ExitCode
from wrapper.core.models import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
)
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

KIB = 1024
D0 = "sha256:" + "0" * 64
DA = "sha256:" + "a" * 64
ECR_SEED = ["--repo", "app", "--region", ECR_REGION, "--account", ECR_ACCOUNT]
ERROR_PREFIX = "soci-wrapper: error:"


def _json_blob(document: dict[str, Any], media_type: str) -> Blob:
    data = json.dumps(document, separators=(",", ":")).encode()
    return Blob(Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)), data=data)


def zstd_layer(directory: Path, spec: LayerSpec) -> Layer:
    """A real zstd-compressed tar layer (Debian's ``zstd`` program); without it, the tar itself under the zstd
    media type (soci decides by the media type)."""
    tar = build_layer(directory, LayerSpec(spec.size_bytes, spec.files, None, spec.seed))
    assert tar.path is not None
    path = tar.path.with_suffix(".tar.zst")
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-f", "-o", str(path), str(tar.path)], check=True)
    else:
        shutil.copyfile(tar.path, path)
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Layer(Descriptor(OCI_LAYER_ZSTD, digest, len(data)), path=path, diff_id=tar.diff_id)


def image_of(layers: list[Layer]) -> tuple[list[Blob], Blob]:
    """The blobs (layers, config) and the manifest of a linux/amd64 image made of ``layers``."""
    config = _json_blob(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        },
        OCI_CONFIG,
    )
    manifest = _json_blob(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor.to_oci(),
            "layers": [layer.descriptor.to_oci() for layer in layers],
        },
        OCI_MANIFEST,
    )
    return [*layers, config], manifest


def push_blobs(client: RegistryClient, ref: Reference, blobs: list[Blob], manifest: Blob, tag: str) -> str:
    for blob in blobs:
        client.push_blob(ref, blob.descriptor, blob.source())
    return client.put_manifest(ref, tag, manifest.read_bytes(), OCI_MANIFEST)


# Manifests no registry of ours would store (distribution refuses bodies over 4 MiB, and anything that is not
# a manifest it knows), served by the stub as (Content-Type, body).
_PLATFORM = {"os": "linux", "architecture": "amd64"}
ODD_MANIFESTS: dict[str, tuple[str, bytes]] = {
    "not-json": (OCI_MANIFEST, b"<html><body>Welcome to nginx!</body></html>"),
    "too-large": (
        OCI_MANIFEST,
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "padding": "x" * (5 << 20)}).encode(),
    ),
    "unknown-type": (
        "application/vnd.example.thing.v1+json",
        b'{"schemaVersion":2,"mediaType":"application/vnd.example.thing.v1+json"}',
    ),
    "no-config": (
        OCI_MANIFEST,
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
    ),
    "index-entry-without-digest": (
        OCI_INDEX,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": OCI_MANIFEST, "size": 512, "platform": _PLATFORM}],
            }
        ).encode(),
    ),
}


class World:
    """The module's servers, images and files, each made on first use and stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stops: list[Callable[[], None]] = []
        # A loopback port that refuses connections (bound, never listening) for as long as the module runs.
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind(("127.0.0.1", 0))
        self.closed_port = int(self._closed.getsockname()[1])
        self.closed_host = f"127.0.0.1:{self.closed_port}"
        self._stops.append(self._closed.close)

    def close(self) -> None:
        for stop in reversed(self._stops):
            stop()

    def path(self, name: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def env(self) -> dict[str, str]:
        """What every run gets: no credentials of the caller, AWS pointed at the closed port."""
        aws = self.path("aws")
        aws.mkdir(exist_ok=True)
        for name in ("config", "credentials"):
            (aws / name).touch()
        docker = self.path("docker-none")
        docker.mkdir(exist_ok=True)
        closed = f"http://{self.closed_host}"
        return {
            "AWS_CONFIG_FILE": str(aws / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": closed,
            "AWS_ENDPOINT_URL_ECR": closed,
            "AWS_ENDPOINT_URL_ECR_PUBLIC": closed,
            "AWS_ENDPOINT_URL_STS": closed,
            "DOCKER_CONFIG": str(docker),
            "NO_COLOR": "1",
        }

    # -- servers -----------------------------------------------------------------------------------------
    @cached_property
    def registry(self) -> RegistryServer:
        """Anonymous, plain HTTP; accepts schema 1 pushes too."""
        server = start_registry(self.path("registry"), schema1=True)
        self._stops.append(server.stop)
        return server

    @cached_property
    def tls(self) -> RegistryServer:
        """TLS with htpasswd (``testuser``); its CA is ``tls.ca_file``."""
        server = start_tls_registry(self.path("tls-registry"))
        self._stops.append(server.stop)
        return server

    @cached_property
    def stub(self) -> StubServer:
        stub = StubServer()
        stub.route("GET", "/v2/", lambda r: StubResponse(200, {"Content-Type": "application/json"}, b"{}"))
        for name, (content_type, body) in ODD_MANIFESTS.items():

            def serve(
                request: StubRequest, content_type: str = content_type, body: bytes = body
            ) -> StubResponse:
                return StubResponse(200, {"Content-Type": content_type}, body)

            stub.route("GET", f"/v2/odd/{name}/manifests/", serve)
            stub.route("HEAD", f"/v2/odd/{name}/manifests/", serve)
        # The client hangs up on a body over its limit: that is expected, not worth a traceback in the log.
        stub._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        stub.__enter__()
        self._stops.append(lambda: stub.__exit__(None, None, None))
        return stub

    @cached_property
    def not_containerd_socket(self) -> str:
        """A unix socket that accepts connections and never speaks gRPC."""
        path = Path(tempfile.mkdtemp(prefix="sock-")) / "not-containerd.sock"  # short: sun_path is 108 bytes
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(8)
        self._stops.append(listener.close)
        self._stops.append(lambda: shutil.rmtree(path.parent, ignore_errors=True))
        return str(path)

    # -- images ------------------------------------------------------------------------------------------
    @cached_property
    def client(self) -> RegistryClient:
        client = RegistryClient(CredentialStore(use_ecr=False))
        self._stops.append(client.close)
        return client

    @cached_property
    def single(self) -> Reference:
        """A linux/amd64 image, pinned by digest."""
        image = build_image(self.path("layers"), [LayerSpec(64 * KIB, seed=9101)])
        ref = Reference(self.registry.host, "app/single", tag="v1")
        return ref.with_digest(push_image(self.client, ref, image))

    @cached_property
    def multi(self) -> Reference:
        """An OCI index of linux/amd64 and linux/arm64/v8."""
        image = build_index(self.path("layers"), [LayerSpec(64 * KIB, seed=9201)], platforms=(AMD64, ARM64))
        ref = Reference(self.registry.host, "app/multi", tag="v1")
        return ref.with_digest(push_image(self.client, ref, image))

    @cached_property
    def schema1(self) -> Reference:
        ref = Reference(self.registry.host, "legacy/app", tag="schema1")
        push_schema1_image(self.client, ref, self.path("schema1"))
        return ref

    @cached_property
    def zstd_only(self) -> Reference:
        """linux/amd64 with one 64 KiB zstd layer: soci v0.15.0 cannot index it."""
        blobs, manifest = image_of([zstd_layer(self.path("layers"), LayerSpec(64 * KIB, seed=9301))])
        ref = Reference(self.registry.host, "app/zstd")
        return ref.with_digest(push_blobs(self.client, ref, blobs, manifest, "v1"))

    def odd(self, name: str) -> str:
        assert name in ODD_MANIFESTS
        return f"{self.stub.host}/odd/{name}:v1"

    # -- files -------------------------------------------------------------------------------------------
    def docker_config(self, name: str, content: str | dict[str, Any]) -> str:
        directory = self.path(f"docker-{name}")
        directory.mkdir(exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content)
        (directory / "config.json").write_text(text)
        return str(directory)

    def script(self, name: str, body: str, *, mode: int = 0o755) -> str:
        path = self.path(f"bin/{name}")
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(mode)
        return str(path)

    def failing_helper_env(self) -> dict[str, str]:
        self.script("docker-credential-failing", "echo 'keychain is locked' >&2\nexit 1")
        return {"PATH": f"{self.path('bin')}:{os.environ['PATH']}"}

    def regular_file(self, name: str) -> str:
        path = self.path(f"files/{name}")
        path.write_text("just a file\n")
        return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("bad-input"))
    try:
        yield w
    finally:
        w.close()


@dataclass(frozen=True)
class Case:
    """``args(world)``: the command line (``--soci-bin`` of the real soci and ``--work-dir`` are added);
    ``what``/``hint``: regular expressions the error line must match; ``stderr``: one more that stderr must
    match (e.g. a per-layer line); ``xfail``: the bug, for a case that shows one outside this change."""

    id: str
    args: Callable[[World], list[str]]
    code: int
    what: str
    hint: str
    stdin: str = ""
    env: Callable[[World], dict[str, str]] | None = None
    stderr: str = ""
    work_dir_is_a_file: bool = False
    xfail: str = ""


NO_HINT = "the message says what is wrong but not what to do"

CASES = [
    # -- references ------------------------------------------------------------------------------------
    Case(
        "ref-uppercase-repository",
        lambda w: ["index", "localhost:5000/Team/app:v1"],
        ExitCode.USAGE,
        r"'localhost:5000/Team/app:v1': repository names must be lowercase",
        r"lowercase letters and digits",
    ),
    Case(
        "ref-tag-with-bad-characters",
        lambda w: ["index", "localhost:5000/app:bad!tag"],
        ExitCode.USAGE,
        r"invalid tag 'bad!tag'",
        r"up to 128 letters, digits",
    ),
    Case(
        "ref-tag-too-long",
        lambda w: ["index", "localhost:5000/app:" + "t" * 129],
        ExitCode.USAGE,
        r"invalid tag 't{129}': longer than 128 characters",
        r"up to 128 letters",
    ),
    Case(
        "ref-empty",
        lambda w: ["index", ""],
        ExitCode.USAGE,
        r"no image given",
        r"pass IMAGE_REF, or --repo",
    ),
    Case(
        "ref-blank-in-environment",
        lambda w: ["index"],
        ExitCode.USAGE,
        r"invalid image reference: empty",
        r"use host\[:port\]/repository",
        env=lambda w: {"SOCI_WRAPPER_IMAGE": "   "},
    ),
    Case(
        "ref-short-digest",
        lambda w: ["index", "localhost:5000/app@sha256:abc123"],
        ExitCode.USAGE,
        r"invalid digest 'sha256:abc123'",
        r"64 lowercase hex characters",
    ),
    Case(
        "ref-sha512-digest",
        lambda w: ["index", "localhost:5000/app@sha512:" + "a" * 128],
        ExitCode.USAGE,
        r"unsupported digest 'sha512:",
        r"only sha256 digests",
    ),
    Case(
        "ref-http-scheme",
        lambda w: ["index", "http://localhost:5000/app:v1"],
        ExitCode.USAGE,
        r"'http://localhost:5000/app:v1': a reference has no URL scheme",
        r"leave out 'http://'; pass --plain-http",
    ),
    Case(
        "ref-and-repo-together",
        lambda w: ["index", "localhost:5000/app:v1", "--repo", "app"],
        ExitCode.USAGE,
        r"IMAGE_REF or --repo, not both",
        r"give either",
    ),
    Case(
        "pull-ref-invalid",
        lambda w: ["pull", "localhost:5000/App"],
        ExitCode.USAGE,
        r"repository names must be lowercase",
        r"lowercase letters and digits",
    ),
    # -- the ECR seed flags ----------------------------------------------------------------------------
    Case(
        "ecr-account-not-12-digits",
        lambda w: [*ECR_SEED[:4], "--account", "12345", "--digest", DA],
        ExitCode.USAGE,
        r"invalid AWS account id '12345'",
        r"expected 12 digits",
    ),
    Case(
        "ecr-account-with-a-letter",
        lambda w: [*ECR_SEED[:4], "--account", "12345678901a", "--digest", DA],
        ExitCode.USAGE,
        r"invalid AWS account id '12345678901a'",
        r"expected 12 digits",
    ),
    Case(
        "ecr-region-with-underscores",
        lambda w: ["--repo", "app", "--region", "eu_west_1", "--account", ECR_ACCOUNT, "--digest", DA],
        ExitCode.USAGE,
        r"invalid AWS region 'eu_west_1'",
        r"a region such as eu-west-1",
    ),
    Case(
        "ecr-digest-not-sha256",
        lambda w: [*ECR_SEED, "--digest", "md5:0123456789abcdef"],
        ExitCode.USAGE,
        r"invalid digest 'md5:0123456789abcdef'",
        r"expected sha256: followed by 64",
    ),
    Case(
        "ecr-digest-uppercase-hex",
        lambda w: [*ECR_SEED, "--digest", "sha256:" + "A" * 64],
        ExitCode.USAGE,
        r"invalid digest 'sha256:A{64}'",
        r"64 lowercase hex",
    ),
    Case(
        "ecr-tag-with-bad-characters",
        lambda w: [*ECR_SEED, "--tag", "bad!tag"],
        ExitCode.USAGE,
        r"invalid tag 'bad!tag'",
        r"up to 128 letters",
    ),
    Case(
        "ecr-repo-without-digest",
        lambda w: ECR_SEED,
        ExitCode.USAGE,
        r"--repo needs --digest",
        r"\(or --tag\)",
    ),
    # -- SOCI options ----------------------------------------------------------------------------------
    Case(
        "soci-version-v3",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-version", "V3"],
        ExitCode.USAGE,
        r"invalid choice: 'V3'",
        r"choose from 'V1', 'V2'",
    ),
    Case(
        "soci-version-v3-in-environment",
        lambda w: ["index", f"{w.closed_host}/app:v1"],
        ExitCode.USAGE,
        r"invalid SOCI version 'V3'",
        r"use V1 or V2",
        env=lambda w: {"SOCI_WRAPPER_SOCI_VERSION": "v3"},
    ),
    Case(
        "v2-without-output-tag",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-version", "V2"],
        ExitCode.USAGE,
        r"--soci-version V2 needs --output-tag",
        r"name the tag",
    ),
    Case(
        # Checked before the registry is asked (this one refuses connections: a late check would exit 5).
        "v2-output-tag-invalid",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-version", "V2", "--output-tag", "soci tag!"],
        ExitCode.USAGE,
        r"invalid --output-tag 'soci tag!'",
        r"up to 128 letters",
    ),
    # -- sizes, counts, durations, names ---------------------------------------------------------------
    Case(
        "min-layer-size-negative",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--min-layer-size", "-1"],
        ExitCode.USAGE,
        r"--min-layer-size: invalid size '-1'",
        r"use bytes or a number with KiB, MiB or GiB",
    ),
    Case(
        "min-layer-size-unknown-unit",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--min-layer-size", "10XB"],
        ExitCode.USAGE,
        r"--min-layer-size: invalid size '10XB'",
        r"KiB, MiB or GiB",
    ),
    Case(
        "span-size-zero",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--span-size", "0"],
        ExitCode.USAGE,
        r"--span-size",
        r"must be a positive number of bytes",
    ),
    Case(
        # soci's size flags are int64: a larger one used to fail soci create, after the pull.
        "span-size-beyond-int64",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--span-size", "99999999999GiB"],
        ExitCode.USAGE,
        r"--span-size: invalid size '99999999999GiB': too large",
        r"at most \d+ bytes",
    ),
    Case(
        "max-concurrent-downloads-zero",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--max-concurrent-downloads", "0"],
        ExitCode.USAGE,
        r"--max-concurrent-downloads",
        r"must be at least 1",
    ),
    Case(
        "soci-timeout-negative",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-timeout", "-5"],
        ExitCode.USAGE,
        r"--soci-timeout: invalid duration '-5'",
        r"use a positive number of seconds",
    ),
    Case(
        "soci-timeout-nan",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-timeout", "nan"],
        ExitCode.USAGE,
        r"--soci-timeout: invalid duration 'nan'",
        r"use a positive number of seconds",
    ),
    Case(
        # containerd refuses it, but only once started (exit 6, after the registry work).
        "namespace-invalid",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--namespace", "my namespace!"],
        ExitCode.USAGE,
        r"--namespace: invalid namespace 'my namespace!'",
        r"use letters and digits",
    ),
    Case(
        "platform-malformed",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--platform", "a/b/c/d"],
        ExitCode.USAGE,
        r"invalid platform 'a/b/c/d'",
        r"use os/arch\[/variant\]",
    ),
    Case(
        "platform-malformed-in-environment",
        lambda w: ["index", f"{w.closed_host}/app:v1"],
        ExitCode.USAGE,
        r"invalid platform 'linux'",
        r"use os/arch\[/variant\]",
        env=lambda w: {"SOCI_WRAPPER_PLATFORMS": "linux"},
    ),
    Case(
        "platform-and-all-platforms",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--platform", "linux/amd64", "--all-platforms"],
        ExitCode.USAGE,
        r"--platform and --all-platforms exclude each other",
        r"pick one",
    ),
    Case(
        "unknown-flag",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--bogus"],
        ExitCode.USAGE,
        r"unrecognized arguments: --bogus",
        r"see 'soci-wrapper --help'",
    ),
    # -- programs and sockets --------------------------------------------------------------------------
    Case(
        "soci-bin-missing",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-bin", "/nonexistent/soci"],
        ExitCode.MISSING_DEPENDENCY,
        r"soci not found at /nonexistent/soci",
        r"run scripts/bootstrap.sh, set SOCI_BIN or pass --soci-bin",
    ),
    Case(
        "soci-bin-not-executable",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-bin", w.script("soci", "exit 0", mode=0o644)],
        ExitCode.MISSING_DEPENDENCY,
        r"soci not found at .*/bin/soci",
        r"pass --soci-bin",
    ),
    Case(
        "soci-bin-not-soci",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--soci-bin", w.script("other", "echo 'docker 27.1'")],
        ExitCode.MISSING_DEPENDENCY,
        r"/bin/other is not a soci binary",
        r"pass --soci-bin",
    ),
    Case(
        "containerd-address-not-containerd",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--containerd-address", w.not_containerd_socket],
        ExitCode.CONTAINERD,
        r"cannot reach containerd at .*not-containerd\.sock: containerd did not answer",
        r"is it containerd's socket\?",
    ),
    Case(
        "containerd-address-regular-file",
        lambda w: [
            "index",
            f"{w.closed_host}/app:v1",
            "--containerd-address",
            w.regular_file("containerd.sock"),
        ],
        ExitCode.CONTAINERD,
        r"cannot reach containerd at .*containerd\.sock: not a unix socket",
        r"--containerd-address|containerd's socket",
    ),
    Case(
        "containerd-bin-not-containerd",
        lambda w: [str(w.single), "--containerd-bin", "/bin/true", "--min-layer-size", "32KiB"],
        ExitCode.MISSING_DEPENDENCY,
        r"/bin/true is not (a )?containerd",
        r"--containerd-bin|install",
    ),
    Case(
        "work-dir-is-a-file",
        lambda w: ["index", f"{w.closed_host}/app:v1"],
        ExitCode.USAGE,
        r"--work-dir .* is not a directory",
        r"pass a directory",
        work_dir_is_a_file=True,
    ),
    # -- what the registry holds -----------------------------------------------------------------------
    Case(
        "platform-missing-from-single-platform-image",
        lambda w: [str(w.single), "--platform", "linux/nonsense"],
        ExitCode.NOT_FOUND,
        r"the image has no linux/nonsense variant; it has linux/amd64",
        r"choose one with --platform, or use --all-platforms",
    ),
    Case(
        "platform-missing-from-index",
        lambda w: [str(w.multi), "--platform", "linux/s390x"],
        ExitCode.NOT_FOUND,
        r"no linux/s390x variant; it has linux/amd64, linux/arm64/v8",
        r"choose one with --platform",
    ),
    Case(
        "repository-not-found",
        lambda w: ["index", f"{w.registry.host}/no/such-repo:v1"],
        ExitCode.NOT_FOUND,
        r"manifest .*/no/such-repo:v1 not found",
        r"check",
    ),
    Case(
        "tag-not-found",
        lambda w: ["index", f"{w.single.registry}/{w.single.repository}:no-such-tag"],
        ExitCode.NOT_FOUND,
        r"manifest .*/app/single:no-such-tag not found",
        r"check",
    ),
    Case(
        "digest-not-found",
        lambda w: ["index", f"{w.single.registry}/{w.single.repository}@{D0}"],
        ExitCode.NOT_FOUND,
        rf"manifest .*/app/single@{D0} not found",
        r"check",
    ),
    Case(
        "manifest-not-json",
        lambda w: ["index", w.odd("not-json")],
        ExitCode.REGISTRY,
        r"manifest .*/odd/not-json:v1 is not valid JSON",
        r"check|registry",
    ),
    Case(
        "manifest-over-4-mib",
        lambda w: ["index", w.odd("too-large")],
        ExitCode.REGISTRY,
        r"manifest .*/odd/too-large:v1 is \d+ bytes, over the 4 MiB limit",
        r"rebuild|smaller",
    ),
    Case(
        "manifest-of-unknown-media-type",
        lambda w: ["index", w.odd("unknown-type")],
        ExitCode.REGISTRY,
        r"application/vnd\.example\.thing\.v1\+json .*not an image",
        r"OCI|Docker|container image",
    ),
    Case(
        "manifest-without-config",
        lambda w: ["index", w.odd("no-config")],
        ExitCode.REGISTRY,
        r"config",
        r"rebuild|push",
    ),
    Case(
        "index-entry-without-digest",
        lambda w: ["index", w.odd("index-entry-without-digest")],
        ExitCode.REGISTRY,
        r"invalid content descriptor .*: no digest",
        r"rebuild and push it",
    ),
    Case(
        "schema-1-manifest",
        lambda w: [str(w.schema1)],
        ExitCode.REGISTRY,
        r"uses Docker schema 1, which is not supported",
        r"rebuild/push it with a current Docker or buildx",
    ),
    Case(
        "zstd-layers-only",
        lambda w: [str(w.zstd_only), "--min-layer-size", "32KiB"],
        ExitCode.NOTHING_TO_INDEX,
        r"nothing to index: .*zstd",
        r"gzip",
        stderr=r"skipped for layer [0-9a-f]{12} \(\d+\.\d KiB\): .*zstd",
    ),
    # -- credentials -----------------------------------------------------------------------------------
    Case(
        "wrong-password",
        lambda w: [
            f"{w.tls.host}/app/x:v1",
            "--ca-file",
            str(w.tls.ca_file),
            "--username",
            TEST_USERNAME,
            "--password-stdin",
        ],
        ExitCode.AUTH,
        rf"credentials for user '{TEST_USERNAME}' were rejected",
        r"check the password|docker login|--password-stdin",
        stdin="not-the-password\n",
    ),
    Case(
        "docker-config-with-no-credentials",
        lambda w: [
            f"{w.tls.host}/app/x:v1",
            "--ca-file",
            str(w.tls.ca_file),
            "--docker-config",
            w.docker_config("empty-object", {}),
        ],
        ExitCode.AUTH,
        r"the registry requires credentials and none were found",
        r"log in with docker login, or pass --username and --password-stdin",
    ),
    Case(
        # docker itself reads an empty config.json as an empty configuration.
        "docker-config-empty-file",
        lambda w: [
            f"{w.tls.host}/app/x:v1",
            "--ca-file",
            str(w.tls.ca_file),
            "--docker-config",
            w.docker_config("empty-file", ""),
        ],
        ExitCode.AUTH,
        r"the registry requires credentials and none were found",
        r"docker login",
    ),
    Case(
        "docker-config-malformed",
        lambda w: [
            f"{w.tls.host}/app/x:v1",
            "--ca-file",
            str(w.tls.ca_file),
            "--docker-config",
            w.docker_config("malformed", "{"),
        ],
        ExitCode.AUTH,
        r"cannot read docker config .*config\.json",
        r"fix|remove|docker login",
    ),
    Case(
        "docker-config-is-a-file",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--docker-config", w.regular_file("docker-config")],
        ExitCode.USAGE,
        r"--docker-config .* is not a directory",
        r"pass the directory that holds config\.json",
    ),
    Case(
        "credential-helper-fails",
        lambda w: [
            f"{w.tls.host}/app/x:v1",
            "--ca-file",
            str(w.tls.ca_file),
            "--docker-config",
            w.docker_config("helper-fails", {"credHelpers": {w.tls.host: "failing"}}),
        ],
        ExitCode.AUTH,
        r"docker-credential-failing get failed for .*: keychain is locked",
        r"credHelpers|config\.json|docker login",
        env=lambda w: w.failing_helper_env(),
    ),
    Case(
        "credential-helper-missing",
        lambda w: [
            f"{w.tls.host}/app/x:v1",
            "--ca-file",
            str(w.tls.ca_file),
            "--docker-config",
            w.docker_config("helper-missing", {"credHelpers": {w.tls.host: "nonexistent"}}),
        ],
        ExitCode.AUTH,
        r"credential helper 'nonexistent' but docker-credential-nonexistent is not on PATH",
        r"install it, or remove it from config\.json",
    ),
    Case(
        "ecr-without-aws-credentials",
        lambda w: [*ECR_SEED, "--digest", DA, "--endpoint-override", f"{ECR_HOST}={w.closed_host}"],
        ExitCode.AUTH,
        rf"no AWS credentials found to log in to {re.escape(ECR_HOST)}",
        r"configure AWS credentials",
    ),
    Case(
        "username-without-password-stdin",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--username", "u"],
        ExitCode.USAGE,
        r"--username needs --password-stdin",
        r"pipe the password in",
    ),
    Case(
        "password-stdin-empty",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--username", "u", "--password-stdin"],
        ExitCode.USAGE,
        r"--password-stdin read an empty password",
        r"pipe the password in",
        stdin="\n",
    ),
    Case(
        "ca-file-missing",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--ca-file", "/nonexistent/ca.pem"],
        ExitCode.USAGE,
        r"cannot use --ca-file /nonexistent/ca\.pem: No such file or directory",
        r"pass a PEM file with the CA certificate",
    ),
    Case(
        "ca-file-not-pem",
        lambda w: ["index", f"{w.closed_host}/app:v1", "--ca-file", w.regular_file("ca.pem")],
        ExitCode.USAGE,
        r"cannot use --ca-file .*ca\.pem: no PEM certificate in it",
        r"pass a PEM file",
    ),
    Case(
        # Loopback registries are plain HTTP unless --ca-file says otherwise.
        "tls-registry-on-loopback-without-ca-file",
        lambda w: [f"localhost:{w.tls.port}/app/x:v1"],
        ExitCode.REGISTRY,
        r"HTTP 400",
        r"--ca-file",
    ),
]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the caller's AWS setup reaches the child (run_cli passes the environment on)."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "DOCKER_CONFIG":
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_aws_env")
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.id,
            marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=c.xfail)] if c.xfail else [],
        )
        for c in CASES
    ],
)
def test_bad_input(case: Case, world: World, soci_bin: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    if case.work_dir_is_a_file:
        work.write_text("a file\n")
    args = case.args(world)
    if args[0] != "pull" and "--soci-bin" not in args:
        args = [*args, "--soci-bin", soci_bin]
    env = {**world.env(), **(case.env(world) if case.env else {})}
    proc = run_cli(*args, "--work-dir", str(work), env=env, stdin=case.stdin, timeout=60)

    stderr = proc.stderr
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    assert proc.returncode == case.code, stderr
    if case.stderr:
        assert re.search(case.stderr, stderr, re.MULTILINE), stderr
    line = errors[0]
    assert re.search(case.what, line), f"the error does not say {case.what!r}: {line}"
    assert re.search(case.hint, line), f"the error does not say what to do ({case.hint!r}): {line}"
    # Nothing left behind.
    if case.work_dir_is_a_file:
        assert work.read_text() == "a file\n"
    else:
        assert not work.exists() or list(work.iterdir()) == []
    assert our_containerd_processes(work) == []


def test_the_table_is_long_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.usefixtures("no_aws_env")
def test_zstd_layers_are_reported_and_the_others_indexed(world: World, soci_bin: str, tmp_path: Path) -> None:
    """An image with a zstd layer (soci v0.15.0 cannot index it) and a gzip one: the run succeeds, with the
    zstd layer reported as skipped and why, per layer, in the progress and in --json."""
    zstd = zstd_layer(world.path("layers"), LayerSpec(64 * KIB, seed=9401))
    gzip = build_layer(world.path("layers"), LayerSpec(64 * KIB, seed=9402))
    assert gzip.descriptor.media_type == OCI_LAYER_GZIP
    blobs, manifest = image_of([zstd, gzip])
    ref = Reference(world.registry.host, "app/mixed")
    ref = ref.with_digest(push_blobs(world.client, ref, blobs, manifest, "v1"))
    work = tmp_path / "work"
    proc = run_cli(
        str(ref), "--min-layer-size", "32KiB", "--soci-bin", soci_bin, "--work-dir", str(work), "--json",
        env=world.env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert re.search(rf"skipped for layer {zstd.digest[7:19]} .*zstd", proc.stderr), proc.stderr
    report = json.loads(proc.stdout)
    (index,) = report["indexes"]
    layers = {layer["digest"]: layer for layer in index["layers"]}
    assert layers[zstd.digest]["status"] == "skipped"
    assert "zstd" in json.dumps(layers[zstd.digest])
    assert layers[gzip.digest]["status"] == "built"
    assert not work.exists() or list(work.iterdir()) == []
    assert our_containerd_processes(work) == []

from __future__ import annotations

import pytest

from wrapper.core.errors import UsageError
from wrapper.core.reference import Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("library/nginx:latest", "docker.io", "library/nginx", "latest", None),
        ("docker.io/nginx", "docker.io", "library/nginx", None, None),
        ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
        ("registry-1.docker.io/org/app", "docker.io", "org/app", None, None),
        ("org/app", "docker.io", "org/app", None, None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/app:v1", "localhost:5000", "app", "v1", None),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None),
        ("[::1]:5000/app", "[::1]:5000", "app", None, None),
        ("ghcr.io/org/app:1.2.3", "ghcr.io", "org/app", "1.2.3", None),
        (f"ghcr.io/org/app@{D}", "ghcr.io", "org/app", None, D),
        (f"ghcr.io/org/app:v1@{D}", "ghcr.io", "org/app", "v1", D),
        (f"nginx@{D}", "docker.io", "library/nginx", None, D),
        ("quay.io/a_b/c__d/e-f/g.h:T_1.x-y", "quay.io", "a_b/c__d/e-f/g.h", "T_1.x-y", None),
        ("reg.example.com/a--b:_tag", "reg.example.com", "a--b", "_tag", None),
        ("Registry.Example.com/app", "registry.example.com", "app", None, None),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:v2",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "team/app",
            "v2",
            None,
        ),
        (
            "public.ecr.aws/docker/library/busybox:latest",
            "public.ecr.aws",
            "docker/library/busybox",
            "latest",
            None,
        ),
        ("  nginx  ", "docker.io", "library/nginx", None, None),
        ("a" * 10 + ":" + "t" * 128, "docker.io", "library/" + "a" * 10, "t" * 128, None),
    ],
)
def test_parse_valid(text, registry, repository, tag, digest):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Nginx", "lowercase"),  # a single uppercase component is not a registry and not a valid name
        ("ghcr.io/Org/app", "lowercase"),
        ("ghcr.io/org//app", "empty path component"),
        ("ghcr.io/org/app/", "empty path component"),
        ("ghcr.io/", "missing repository"),
        ("ghcr.io/org/-app", "invalid path component"),
        ("ghcr.io/org/app_", "invalid path component"),
        ("ghcr.io/org/a___b", "invalid path component"),
        ("ghcr.io/org/a..b", "invalid path component"),
        ("ghcr.io/org/app:", "invalid tag"),
        ("ghcr.io/org/app:.bad", "invalid tag"),
        ("ghcr.io/org/app:-bad", "invalid tag"),
        ("ghcr.io/org/app:" + "t" * 129, "invalid tag"),
        ("ghcr.io/org/app:a/b", "invalid"),
        ("ghcr.io/org/app@sha256:abc", "invalid digest"),
        ("ghcr.io/org/app@sha512:" + "a" * 128, "unsupported digest"),
        ("ghcr.io/org/app@sha256:" + "A" * 64, "invalid digest"),
        ("ghcr.io/org/app@", "digest"),
        ("ghcr.io/org app", "whitespace"),
        ("-bad.io/app", "invalid registry host"),
        ("bad_host.io/app", "invalid registry host"),
        ("host:port/app", "invalid registry host"),
        ("docker.io/" + "a" * 256, "longer than 255"),
        (":tag", "missing repository"),
    ],
)
def test_parse_invalid(text, reason):
    with pytest.raises(UsageError) as info:
        Reference.parse(text)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message


def test_str_and_reference():
    ref = Reference.parse("localhost:5000/app")
    assert str(ref) == "localhost:5000/app"
    assert ref.reference == "latest"
    tagged = ref.with_tag("v1")
    assert str(tagged) == "localhost:5000/app:v1"
    assert tagged.reference == "v1"
    pinned = tagged.with_digest(D)
    assert str(pinned) == f"localhost:5000/app:v1@{D}"
    assert pinned.reference == D
    assert Reference.parse(str(pinned)) == pinned
    assert str(Reference.parse("nginx")) == "docker.io/library/nginx"
    with pytest.raises(UsageError):
        ref.with_digest("sha256:nothex")
    with pytest.raises(UsageError):
        ref.with_tag("bad tag")


def test_constructor_validates():
    with pytest.raises(UsageError):
        Reference("ghcr.io", "Bad")
    with pytest.raises(UsageError):
        Reference("", "app")
    with pytest.raises(UsageError):
        Reference("ghcr.io", "app", digest="sha256:1")


@pytest.mark.parametrize(
    ("account", "region", "host"),
    [
        ("123456789012", "eu-west-1", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
        ("000000000000", "us-east-1", "000000000000.dkr.ecr.us-east-1.amazonaws.com"),
        ("123456789012", "cn-north-1", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
        ("123456789012", "cn-northwest-1", "123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn"),
        ("123456789012", "us-gov-west-1", "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com"),
        ("123456789012", "ap-southeast-3", "123456789012.dkr.ecr.ap-southeast-3.amazonaws.com"),
    ],
)
def test_ecr(account, region, host):
    ref = Reference.ecr(account, region, "team/app", tag="v1")
    assert ref.registry == host
    assert str(ref) == f"{host}/team/app:v1"
    assert ref.ecr_region == region
    assert ref.ecr_account == account
    assert not ref.is_ecr_public
    assert Reference.parse(str(ref)) == ref
    pinned = Reference.ecr(account, region, "app", digest=D)
    assert pinned.reference == D


@pytest.mark.parametrize(
    ("account", "region", "reason"),
    [
        ("12345678901", "eu-west-1", "account"),
        ("1234567890123", "eu-west-1", "account"),
        ("12345678901a", "eu-west-1", "account"),
        ("", "eu-west-1", "account"),
        ("123456789012", "eu_west_1", "region"),
        ("123456789012", "EU-WEST-1", "region"),
        ("123456789012", "euwest1", "region"),
        ("123456789012", "", "region"),
        ("123456789012", "eu-west-1.evil.com", "region"),
    ],
)
def test_ecr_invalid(account, region, reason):
    with pytest.raises(UsageError, match=reason):
        Reference.ecr(account, region, "app")


def test_ecr_detection():
    assert Reference.parse("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com/app").ecr_region == "us-east-1"
    assert Reference.parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/app").ecr_region == "cn-north-1"
    assert Reference.parse("ghcr.io/app").ecr_region is None
    assert Reference.parse("12345.dkr.ecr.eu-west-1.amazonaws.com/app").ecr_region is None
    assert Reference.parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.io/app").ecr_region is None
    assert Reference.parse("public.ecr.aws/a/b").is_ecr_public
    assert Reference.parse("public.ecr.aws/a/b").ecr_region is None

from __future__ import annotations

import pytest

from wrapper.core.errors import UsageError
from wrapper.core.models import Descriptor, Platform, validate_digest

GOOD = "sha256:" + "a" * 64


def test_validate_digest_accepts_sha256() -> None:
    assert validate_digest(GOOD) == GOOD


@pytest.mark.parametrize("bad", ["", "sha256:abc", "md5:" + "a" * 64, "sha256:" + "A" * 64, GOOD + "0"])
def test_validate_digest_rejects(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_digest(bad)
    assert "\n" not in str(info.value)
    assert "sha256" in str(info.value)


def test_platform_parse_and_str() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(UsageError):
            Platform.parse(bad)


def test_platform_matching_variants() -> None:
    assert Platform("linux", "arm64").matches(Platform("linux", "arm64", "v8"))
    assert Platform("linux", "arm", "v7").matches(Platform("linux", "arm", "v7"))
    assert not Platform("linux", "arm", "v7").matches(Platform("linux", "arm", "v6"))
    assert not Platform("linux", "amd64").matches(Platform("linux", "arm64"))
    assert Platform("unknown", "unknown").is_unknown


def test_descriptor_roundtrip() -> None:
    data = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": GOOD,
        "size": 42,
        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        "annotations": {"a": "b"},
        "artifactType": "x/y",
    }
    desc = Descriptor.from_oci(data)
    assert desc.is_manifest and not desc.is_index
    assert desc.platform == Platform("linux", "arm64", "v8")
    assert desc.to_oci() == data

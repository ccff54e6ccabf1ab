"""Image records, leases and namespaces against each supported real containerd, cross-checked with ctr."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.containerd import CtrRunner
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.images import Image
from wrapper.containerd.leases import EXPIRE_LABEL
from wrapper.core.errors import ContainerdError, NotFoundError
from wrapper.core.models import OCI_INDEX, OCI_MANIFEST, Descriptor

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def test_image_record_create_get_update_delete(
    any_containerd_client: ContainerdClient, any_ctr: CtrRunner
) -> None:
    images = any_containerd_client.images
    target = Descriptor(OCI_MANIFEST, DIGEST_A, 1234, annotations={"org.example": "yes"})
    created = images.create(Image("example.com/app:1", target, {"origin": "test"}))
    assert created == Image("example.com/app:1", target, {"origin": "test"})
    assert created.target.annotations == {"org.example": "yes"}

    got = images.get("example.com/app:1")
    assert got.target == target and got.labels == {"origin": "test"}
    assert "example.com/app:1" in any_ctr("images", "ls", "-q").stdout.split()

    with pytest.raises(ContainerdError):
        images.create(Image("example.com/app:1", target))

    got.labels["extra"] = "1"
    updated = images.update(got)
    assert updated.labels == {"origin": "test", "extra": "1"}
    only_label = images.update(Image("example.com/app:1", target, {"extra": "2"}), fields=["labels.extra"])
    assert only_label.labels == {"origin": "test", "extra": "2"}

    new_target = Descriptor(OCI_INDEX, DIGEST_B, 99)
    assert images.put(Image("example.com/app:1", new_target, {})).target == new_target
    assert images.get("example.com/app:1").labels == {}
    assert images.put(Image("example.com/app:2", target)).name == "example.com/app:2"
    assert sorted(i.name for i in images.list()) == ["example.com/app:1", "example.com/app:2"]
    assert [i.name for i in images.list("name==example.com/app:2")] == ["example.com/app:2"]

    images.delete("example.com/app:1")
    with pytest.raises(NotFoundError):
        images.get("example.com/app:1")
    with pytest.raises(NotFoundError):
        images.delete("example.com/app:1")
    assert any_ctr("images", "ls", "-q").stdout.split() == ["example.com/app:2"]


def test_namespaces_are_isolated(any_containerd_client: ContainerdClient) -> None:
    other_name = any_containerd_client.namespace + "-other"
    any_containerd_client.namespaces.create(other_name, {"purpose": "test"})
    any_containerd_client.namespaces.ensure(other_name)  # exists already: no error
    any_containerd_client.namespaces.ensure(any_containerd_client.namespace)
    assert {other_name, any_containerd_client.namespace} <= set(any_containerd_client.namespaces.list())
    with pytest.raises(ContainerdError):
        any_containerd_client.namespaces.create(other_name)

    any_containerd_client.images.create(Image("only-here:1", Descriptor(OCI_MANIFEST, DIGEST_A, 1)))
    with ContainerdClient(any_containerd_client.address, other_name) as other:
        assert other.images.list() == []
    any_containerd_client.namespaces.delete(other_name)
    assert other_name not in any_containerd_client.namespaces.list()


def test_leases_create_list_delete(any_containerd_client: ContainerdClient, any_ctr: CtrRunner) -> None:
    leases = any_containerd_client.leases
    lease_id = leases.create(labels={"who": "test"}, expire_seconds=600)
    assert lease_id in leases.list()
    listing = any_ctr("leases", "ls").stdout
    line = next(row for row in listing.splitlines() if row.startswith(lease_id))
    assert "who=test" in line and EXPIRE_LABEL in line
    leases.delete(lease_id, sync=True)
    assert lease_id not in leases.list()
    with pytest.raises(NotFoundError):
        leases.delete(lease_id)


def test_lease_header_attaches_writes_and_lease_is_deleted(any_containerd_client: ContainerdClient) -> None:
    data = b"held by a lease"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def source(offset: int) -> Iterator[bytes]:
        yield data[offset:]

    assert any_containerd_client.current_lease is None
    with any_containerd_client.lease(expire_seconds=60) as lease_id:
        assert any_containerd_client.current_lease == lease_id
        any_containerd_client.content.write("leased", source, total=len(data), expected=digest)
        assert ("content", digest) in any_containerd_client.leases.resources(lease_id)
        assert lease_id in any_containerd_client.leases.list()
    assert any_containerd_client.current_lease is None
    assert lease_id not in any_containerd_client.leases.list()


def test_lease_is_deleted_when_the_block_fails(any_containerd_client: ContainerdClient) -> None:
    with pytest.raises(RuntimeError), any_containerd_client.lease() as lease_id:
        raise RuntimeError("boom")
    assert lease_id not in any_containerd_client.leases.list()


def _bytes_source(data: bytes) -> Callable[[int], list[bytes]]:
    return lambda offset: [data[offset:]]


def test_after_the_lease_only_content_an_image_references_survives(
    any_containerd_client: ContainerdClient,
) -> None:
    blobs = {name: f"blob {name}".encode() for name in ("kept", "dropped")}
    digests = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    with any_containerd_client.lease():
        for name, data in blobs.items():
            source = _bytes_source(data)
            any_containerd_client.content.write(name, source, total=len(data), expected=digests[name])
        target = Descriptor(OCI_MANIFEST, digests["kept"], len(blobs["kept"]))
        any_containerd_client.images.create(Image("gc-test:1", target))
    # Deleting a lease with sync=True runs garbage collection before answering.
    any_containerd_client.leases.delete(any_containerd_client.leases.create(), sync=True)
    assert any_containerd_client.content.exists(digests["kept"])
    assert not any_containerd_client.content.exists(digests["dropped"])

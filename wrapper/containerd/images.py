"""containerd's Images service: image records, i.e. a name pointing at a manifest or index."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from wrapper.containerd._proto import descriptor_pb2, images_pb2, images_pb2_grpc
from wrapper.containerd.channel import Connection, status_code
from wrapper.core.models import Descriptor

GC_REF = "containerd.io/gc.ref.content"


def gc_labels(body: bytes) -> dict[str, str]:
    """containerd's garbage-collection references of a manifest (its config and layers) or an index (its
    manifests): set on the stored document, they keep what it names alive as long as it is."""
    doc = json.loads(body)
    labels: dict[str, str] = {}
    if isinstance(doc.get("config"), dict):
        labels[f"{GC_REF}.config"] = str(doc["config"]["digest"])
    for i, layer in enumerate(doc.get("layers", [])):
        labels[f"{GC_REF}.l.{i}"] = str(layer["digest"])
    for i, manifest in enumerate(doc.get("manifests", [])):
        labels[f"{GC_REF}.m.{i}"] = str(manifest["digest"])
    return labels


@dataclass
class Image:
    """An image record. Only media type, digest, size and annotations of ``target`` are stored."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)


def _to_proto(image: Image) -> Any:
    target = descriptor_pb2.Descriptor(
        media_type=image.target.media_type,
        digest=image.target.digest,
        size=image.target.size,
        annotations=dict(image.target.annotations),
    )
    return images_pb2.Image(name=image.name, labels=dict(image.labels), target=target)


def _from_proto(msg: Any) -> Image:
    target = Descriptor(
        media_type=str(msg.target.media_type),
        digest=str(msg.target.digest),
        size=int(msg.target.size),
        annotations=dict(msg.target.annotations),
    )
    return Image(name=str(msg.name), target=target, labels=dict(msg.labels))


class ImagesService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = images_pb2_grpc.ImagesStub(conn.channel)

    def get(self, name: str) -> Image:
        """The record ``name``; NotFoundError if there is none."""
        resp = self._conn.unary("images.Get", self._stub.Get, images_pb2.GetImageRequest(name=name))
        return _from_proto(resp.image)

    def create(self, image: Image) -> Image:
        """Create a record; ContainerdError if the name is taken (use put() to replace)."""
        request = images_pb2.CreateImageRequest(image=_to_proto(image))
        return _from_proto(self._conn.unary("images.Create", self._stub.Create, request).image)

    def update(self, image: Image, *, fields: list[str] | None = None) -> Image:
        """Update a record: by default its target and all labels; ``fields`` limits that (e.g.
        ``["labels.foo"]`` sets or removes just that label)."""
        mask = field_mask_pb2.FieldMask(paths=fields or ["target", "labels"])
        request = images_pb2.UpdateImageRequest(image=_to_proto(image), update_mask=mask)
        return _from_proto(self._conn.unary("images.Update", self._stub.Update, request).image)

    def put(self, image: Image) -> Image:
        """Create the record, or replace target and labels if it exists."""
        request = images_pb2.CreateImageRequest(image=_to_proto(image))
        try:
            resp = self._stub.Create(request, metadata=self._conn.metadata(), timeout=self._conn.timeout)
        except grpc.RpcError as exc:
            if status_code(exc) != grpc.StatusCode.ALREADY_EXISTS:
                raise self._conn.error(exc, "images.Create", timeout=self._conn.timeout) from None
            return self.update(image)
        return _from_proto(resp.image)

    def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete the record ``name`` (NotFoundError if absent); ``sync`` waits for garbage collection."""
        request = images_pb2.DeleteImageRequest(name=name, sync=sync)
        self._conn.unary("images.Delete", self._stub.Delete, request)

    def list(self, *filters: str) -> list[Image]:
        """All records in the namespace, optionally filtered (containerd filter syntax, e.g. ``name==x``)."""
        request = images_pb2.ListImagesRequest(filters=list(filters))
        return [_from_proto(img) for img in self._conn.unary("images.List", self._stub.List, request).images]

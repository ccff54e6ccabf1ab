"""Filesystem mounts as containerd passes them around: what a snapshotter answers to Prepare, what a task's
root filesystem is made of, where the differ unpacks a layer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wrapper.containerd._proto import mount_pb2


class MountLike(Protocol):
    """Anything with a mount's four fields (our dataclass, containerd's message)."""

    @property
    def type(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def options(self) -> Sequence[str] | Any: ...


@dataclass(frozen=True)
class Mount:
    """A mount to perform: ``type`` (overlay, bind, ...), ``source``, ``target`` (usually empty: the caller
    says where) and ``options`` (for overlay: ``lowerdir=…``, ``upperdir=…``, ``workdir=…``)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    @classmethod
    def of(cls, mount: MountLike) -> Mount:
        return cls(
            str(mount.type), str(mount.source), str(mount.target), tuple(str(o) for o in mount.options)
        )

    def option(self, name: str) -> str | None:
        """The value of option ``name=value`` (None when absent)."""
        prefix = name + "="
        return next((o[len(prefix) :] for o in self.options if o.startswith(prefix)), None)


def to_proto(mounts: Iterable[MountLike]) -> list[Any]:
    """containerd's Mount messages for ``mounts``."""
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]

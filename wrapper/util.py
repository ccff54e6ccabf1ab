"""Small helpers shared by the registry and containerd clients."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def one_line(value: object) -> str:
    """Collapse whitespace (newlines included) so that a message prints as one line."""
    return " ".join(str(value).split())


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup arbitrary chunks into pieces of exactly ``size`` bytes (the last one may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        if not buffer and len(chunk) == size:
            yield bytes(chunk)
            continue
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)

"""Small helpers shared by the registry and containerd clients."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def one_line(value: object) -> str:
    """Collapse whitespace (newlines included) so that a message prints as one line."""
    return " ".join(str(value).split())


def rechunk(chunks: Iterable[bytes], size: int, *, flush_on_error: bool = False) -> Iterator[bytes]:
    """Regroup arbitrary chunks into pieces of exactly ``size`` bytes (the last one may be shorter).

    ``flush_on_error``: when ``chunks`` raises, first yield what is buffered (a shorter piece), then raise
    on the next ``next()``; so a consumer that keeps everything it was given (a resumable write) holds every
    byte the source produced, not only the last full piece.
    """
    buffer = bytearray()
    try:
        for chunk in chunks:
            if not buffer and len(chunk) == size:
                yield bytes(chunk)
                continue
            buffer += chunk
            while len(buffer) >= size:
                yield bytes(buffer[:size])
                del buffer[:size]
    except Exception:
        if flush_on_error and buffer:
            rest = bytes(buffer)
            buffer.clear()
            yield rest
        raise
    if buffer:
        yield bytes(buffer)

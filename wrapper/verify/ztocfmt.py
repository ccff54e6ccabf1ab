"""Read a zTOC blob without soci: the few facts of it that can be checked against the registry.

A zTOC is a FlatBuffers document (soci's ``ztoc/fbs/ztoc.fbs``, table ``Ztoc``): its version, the tool that
built it, the compressed and uncompressed sizes of the layer it describes, the layer's files (``TOC``) and the
checkpoints that let a reader start decompressing in the middle of the layer (``CompressionInfo``). For a
gzip layer the checkpoints are soci's own binary (a 4-byte count, then the 8-byte span size, then the
checkpoints); for an uncompressed tar layer they are a small FlatBuffers table (``TarZinfo``) holding the span
size.

This module decodes just that, with every offset checked against the blob's length, so that a truncated or
foreign blob is reported as such instead of read past its end. The full decoding (and the file extraction)
is the real soci's job (``soci ztoc info`` / ``get-file``, the content level).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

GZIP = 1
UNCOMPRESSED = 2
ALGORITHMS = {GZIP: "gzip", UNCOMPRESSED: "uncompressed"}


class ZtocFormatError(ValueError):
    """The blob is not a readable zTOC (truncated, or not a zTOC at all)."""


@dataclass(frozen=True)
class ZtocFacts:
    version: str
    build_tool: str
    compressed_size: int
    uncompressed_size: int
    files: int
    regular_files: int
    algorithm: str  # gzip | uncompressed
    spans: int
    span_size: int


class _Buffer:
    """Bounds-checked FlatBuffers access (little-endian, as FlatBuffers always is)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise ZtocFormatError(
                f"offset {pos} is past the end of the blob ({len(self.data)} bytes): truncated?"
            )
        value: int = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def u8(self, pos: int) -> int:
        return self._unpack("<B", pos)

    def u16(self, pos: int) -> int:
        return self._unpack("<H", pos)

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def i32(self, pos: int) -> int:
        return self._unpack("<i", pos)

    def i64(self, pos: int) -> int:
        return self._unpack("<q", pos)

    def table(self, pos: int) -> _Table:
        vtable = pos - self.i32(pos)
        vt_size = self.u16(vtable)
        if vt_size < 4 or vt_size % 2:
            raise ZtocFormatError(f"bad table at offset {pos}")
        self.u16(vtable + vt_size - 2)  # the whole vtable is inside the blob
        return _Table(self, pos, vtable, vt_size)

    def indirect(self, pos: int) -> int:
        """The absolute position an offset field at ``pos`` points to."""
        return pos + self.u32(pos)

    def vector(self, pos: int, element_size: int) -> tuple[int, int]:
        """(start, length) of the vector at ``pos``; its whole body is checked to be inside the blob."""
        length = self.u32(pos)
        start = pos + 4
        end = start + length * element_size
        if end > len(self.data):
            raise ZtocFormatError(
                f"a vector of {length} elements at offset {pos} runs past the end of the blob "
                f"({len(self.data)} bytes): truncated?"
            )
        return start, length

    def string(self, pos: int) -> str:
        start, length = self.vector(pos, 1)
        return bytes(self.data[start : start + length]).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Table:
    buf: _Buffer
    pos: int
    vtable: int
    vt_size: int

    def field(self, index: int) -> int | None:
        """Absolute position of field ``index``, or None when it is absent (its default applies)."""
        slot = 4 + 2 * index
        if slot >= self.vt_size:
            return None
        offset = self.buf.u16(self.vtable + slot)
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(index)
        if pos is None:
            return default
        return {"B": self.buf.u8, "i": self.buf.i32, "q": self.buf.i64}[fmt](pos)

    def string(self, index: int) -> str:
        pos = self.field(index)
        return "" if pos is None else self.buf.string(self.buf.indirect(pos))

    def table(self, index: int) -> _Table | None:
        pos = self.field(index)
        return None if pos is None else self.buf.table(self.buf.indirect(pos))

    def vector_of_tables(self, index: int) -> list[_Table]:
        pos = self.field(index)
        if pos is None:
            return []
        start, length = self.buf.vector(self.buf.indirect(pos), 4)
        return [self.buf.table(self.buf.indirect(start + 4 * i)) for i in range(length)]

    def bytes_vector(self, index: int) -> memoryview:
        pos = self.field(index)
        if pos is None:
            return memoryview(b"")
        start, length = self.buf.vector(self.buf.indirect(pos), 1)
        return self.buf.data[start : start + length]


# Field indexes, in the order of ztoc.fbs (FlatBuffers numbers fields by declaration order).
_ZTOC_VERSION, _ZTOC_TOOL, _ZTOC_COMPRESSED, _ZTOC_UNCOMPRESSED, _ZTOC_TOC, _ZTOC_COMPRESSION = range(6)
_TOC_METADATA = 0
_FILE_NAME, _FILE_TYPE = 0, 1
_CI_ALGORITHM, _CI_MAX_SPAN, _CI_DIGESTS, _CI_CHECKPOINTS = range(4)
_TAR_ZINFO_SPAN_SIZE = 1


def read_ztoc(data: bytes | memoryview) -> ZtocFacts:
    """The facts of the zTOC ``data``; ZtocFormatError when it cannot be read in full."""
    buf = _Buffer(data)
    if len(buf.data) < 8:
        raise ZtocFormatError(f"{len(buf.data)} bytes are too few for a zTOC")
    root = buf.table(buf.u32(0))
    version = root.string(_ZTOC_VERSION)
    if not version:
        raise ZtocFormatError("no version field: not a zTOC")
    toc = root.table(_ZTOC_TOC)
    info = root.table(_ZTOC_COMPRESSION)
    if toc is None or info is None:
        raise ZtocFormatError("no table of contents or no compression info: not a zTOC")
    files = toc.vector_of_tables(_TOC_METADATA)
    regular = 0
    for entry in files:  # reading every name checks that the whole table of contents is there
        entry.string(_FILE_NAME)
        if entry.string(_FILE_TYPE) == "reg":
            regular += 1
    algorithm = info.scalar(_CI_ALGORITHM, "B", GZIP)
    if algorithm not in ALGORITHMS:
        raise ZtocFormatError(f"unknown compression algorithm {algorithm}")
    max_span = info.scalar(_CI_MAX_SPAN, "i")
    digests = info.field(_CI_DIGESTS)
    if digests is not None:
        start, count = buf.vector(buf.indirect(digests), 4)
        for i in range(count):
            buf.string(buf.indirect(start + 4 * i))
    checkpoints = info.bytes_vector(_CI_CHECKPOINTS)
    span_size = _span_size(checkpoints, algorithm)
    return ZtocFacts(
        version=version,
        build_tool=root.string(_ZTOC_TOOL),
        compressed_size=root.scalar(_ZTOC_COMPRESSED, "q"),
        uncompressed_size=root.scalar(_ZTOC_UNCOMPRESSED, "q"),
        files=len(files),
        regular_files=regular,
        algorithm=ALGORITHMS[algorithm],
        spans=max_span + 1,
        span_size=span_size,
    )


def _span_size(checkpoints: memoryview, algorithm: int) -> int:
    if algorithm == GZIP:
        # soci's gzip zinfo blob: int32 number of checkpoints, int64 span size, then the checkpoints.
        if len(checkpoints) < 12:
            raise ZtocFormatError("the gzip checkpoints are missing or truncated")
        count, span = struct.unpack_from("<iq", checkpoints, 0)
        if count < 1 or span <= 0:
            raise ZtocFormatError(f"implausible gzip checkpoints ({count} checkpoints, span size {span})")
        return int(span)
    tar = _Buffer(checkpoints)
    if len(tar.data) < 8:
        raise ZtocFormatError("the tar checkpoints are missing or truncated")
    return tar.table(tar.u32(0)).scalar(_TAR_ZINFO_SPAN_SIZE, "q")

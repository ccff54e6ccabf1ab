"""Container images with realistic content, built deterministically and streamed to disk.

tests/imagefactory.py fills each layer with one file of random bytes: gzip cannot shrink it, and soci's zTOC
for it lists a single file. Real layers hold thousands of files of all sizes, most of them text-like (source,
configuration, scripts, documentation) and some already compressed or binary; gzip shrinks them 2-3 times, and
their zTOCs list every file. This module builds such layers:

* files: sizes log-uniform from 200 bytes to 64 KiB (92 % of them) or from 64 KiB to 4 MiB (the rest),
  in a tree of directories (``opt/<layer>/pkgNNN/modN/...``);
* content: text-like lines drawn from a fixed pool (about 4x with gzip -6), or random bytes
  (incompressible), chosen per file so that the whole layer compresses about 2.4x;
* gzip at level 6 (the default of Go's compress/gzip, which docker and buildkit use), made fast enough to
  build gigabytes: text is cut into 32 KiB chunks of the pool, each deflated once (from an empty window,
  ending with a full flush) and then copied into every file that uses it; random files of 16 KiB or more
  are written as stored deflate blocks (what deflate makes of random data anyway). Only tar headers and
  short tails go through zlib as the layer is written. The result is one valid gzip member whose deflate
  stream has a flush point every few KiB (about 100-150 MiB/s of output per core, instead of ~10).

A layer is described by a ``LayerPlan`` (a name, a seed, a compressed size to reach): the same plan gives the
same bytes, so the same digest, on every run (with the same zlib); files are added until the compressed
output reaches the target. Nothing is held in memory but the 16 MiB text pool and one file at a time.
Built layers are kept in a directory and reused when present (``<key>.tar.gz`` and ``<key>.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import random
import struct
import tarfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tests.imagefactory import AMD64, Blob, Image, Layer
from wrapper.core.models import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, Platform

MiB = 1024 * 1024
FORMAT = 3  # bump when the generator changes, so that cached layers are not taken for new ones
GZIP_LEVEL = 6
_POOL_SEED = 20240613
_POOL_BYTES = 16 * MiB
_CHUNK = 32 * 1024  # text is copied in pre-deflated chunks of this size
_STORE_MIN = 16 * 1024  # random files at least this large are written as stored blocks
_STORED_BLOCK = 65535
_SMALL_FILES = 0.92  # share of files from 200 B to 64 KiB; the others are 64 KiB to 4 MiB
_TEXT_SMALL = 0.9  # chance that a small file is text-like
_TEXT_LARGE = 0.8  # ... and a large one (large files carry most bytes: this sets the ratio)


@dataclass(frozen=True)
class LayerPlan:
    """A layer to build: ``target`` compressed bytes (approximately) of files seeded by ``seed``."""

    name: str
    seed: int
    target: int

    def key(self) -> str:
        return f"{self.name}-s{self.seed}-{self.target}-f{FORMAT}"


@dataclass(frozen=True)
class BuiltLayer:
    """A layer on disk with what the image needs to know about it, and what it holds."""

    plan: LayerPlan
    path: Path
    digest: str
    size: int
    diff_id: str
    files: int
    uncompressed: int

    def layer(self) -> Layer:
        return Layer(Descriptor(OCI_LAYER_GZIP, self.digest, self.size), path=self.path, diff_id=self.diff_id)


# -- content -------------------------------------------------------------------------------------------------
_POOL: bytes | None = None


def text_pool() -> bytes:
    """16 MiB of source-like text: lines of words from a Zipf-distributed vocabulary, themselves drawn
    (Zipf) from a pool of 30,000 lines, as code and configuration repeat lines and idioms."""
    global _POOL
    if _POOL is None:
        rng = random.Random(_POOL_SEED)
        letters = "abcdefghijklmnopqrstuvwxyz_"
        vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 12))) for _ in range(6000)]
        vocab += ["(", ")", "=", "==", "{", "}", ":", ",", "return", "def", "self", "import", "the", "0", "1"]
        vocab += ["None", "if", "for", "in", "#", "//", '"', "'", "->"]
        weights = [1 / (i + 1) for i in range(len(vocab))]
        lines = []
        for _ in range(30000):
            indent = " " * (4 * rng.choice((0, 0, 1, 1, 1, 2, 2, 3)))
            words = rng.choices(vocab, weights=weights, k=rng.randint(1, 14))
            lines.append((indent + " ".join(words) + "\n").encode())
        line_weights = [1 / (i + 1) for i in range(len(lines))]
        out = bytearray()
        while len(out) < _POOL_BYTES:
            out += b"".join(rng.choices(lines, weights=line_weights, k=20000))
        _POOL = bytes(out[:_POOL_BYTES])
    return _POOL


_DEFLATED: list[bytes] | None = None


def deflated_chunks() -> list[bytes]:
    """The pool cut into 16 KiB chunks, each deflated on its own (level 6, raw deflate, ending with a full
    flush: byte-aligned, no final block, no reference outside the chunk), so it can be copied into any
    deflate stream that was itself fully flushed before it."""
    global _DEFLATED
    if _DEFLATED is None:
        pool = text_pool()
        out = []
        for start in range(0, len(pool), _CHUNK):
            z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
            out.append(z.compress(pool[start : start + _CHUNK]) + z.flush(zlib.Z_FULL_FLUSH))
        _DEFLATED = out
    return _DEFLATED


def _log_uniform(rng: random.Random, low: float, high: float) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


# -- writing -------------------------------------------------------------------------------------------------
class _Counting:
    """Writes to ``out`` while hashing and counting what goes through."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if data:
            self.hash.update(data)
            self.size += len(data)
            self._out.write(data)


class _GzipWriter:
    """A gzip member written incrementally: ``compress`` deflates, ``store`` appends stored blocks (after a
    full flush, so no later match reaches back across them). Tracks the uncompressed stream's sha256."""

    def __init__(self, out: _Counting, level: int = GZIP_LEVEL) -> None:
        self._out = out
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._crc = 0
        self._pending = False  # data given to zlib since the last full flush
        self.uncompressed = hashlib.sha256()
        self.uncompressed_size = 0
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # no name, mtime 0, OS unknown (as Go)

    def _account(self, data: bytes | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self.uncompressed.update(data)
        self.uncompressed_size += len(data)

    def compress(self, data: bytes | memoryview) -> None:
        self._account(data)
        self._out.write(self._z.compress(data))
        self._pending = True

    def _full_flush(self) -> None:
        if self._pending:
            self._out.write(self._z.flush(zlib.Z_FULL_FLUSH))
            self._pending = False

    def insert(self, data: bytes | memoryview, deflated: bytes) -> None:
        """``data``, already deflated on its own into ``deflated`` (see deflated_chunks)."""
        self._account(data)
        self._full_flush()
        self._out.write(deflated)

    def store(self, data: bytes | memoryview) -> None:
        self._account(data)
        self._full_flush()
        view = memoryview(data)
        for start in range(0, len(view), _STORED_BLOCK):
            block = view[start : start + _STORED_BLOCK]
            n = len(block)
            self._out.write(b"\x00" + struct.pack("<HH", n, n ^ 0xFFFF))  # BFINAL=0, BTYPE=00
            self._out.write(block)

    def close(self) -> None:
        self._out.write(self._z.flush(zlib.Z_FINISH))
        self._out.write(struct.pack("<II", self._crc, self.uncompressed_size & 0xFFFFFFFF))


def _header(name: str, size: int, mode: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def build_layer(directory: Path, plan: LayerPlan) -> BuiltLayer:
    """Build ``plan`` under ``directory`` (or return the copy already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{plan.key()}.tar.gz"
    meta_path = directory / f"{plan.key()}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if path.stat().st_size == meta["size"]:
            return BuiltLayer(
                plan, path, meta["digest"], meta["size"], meta["diff_id"], meta["files"], meta["uncompressed"]
            )
    pool = memoryview(text_pool())
    chunks = deflated_chunks()
    rng = random.Random(plan.seed)
    largest = max(64 * 1024, min(4 * MiB, plan.target // 4))
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    files = 0
    with tmp.open("wb") as raw:
        out = _Counting(raw)
        gz = _GzipWriter(out)
        dirs: set[str] = set()
        while out.size < plan.target:
            n = files
            files += 1
            if rng.random() < _SMALL_FILES:
                size = _log_uniform(rng, 200, 64 * 1024)
                text = rng.random() < _TEXT_SMALL
            else:
                size = _log_uniform(rng, 64 * 1024, largest)
                text = rng.random() < _TEXT_LARGE
            folder = f"opt/{plan.name}/pkg{n // 400:03d}/mod{(n // 40) % 10}"
            parts = folder.split("/")
            for i in range(1, len(parts) + 1):
                parent = "/".join(parts[:i])
                if parent not in dirs:
                    dirs.add(parent)
                    gz.compress(_header(parent + "/", 0, 0o755, tarfile.DIRTYPE))
            ext = (
                rng.choice((".py", ".js", ".txt", ".json", ".yaml", ".h"))
                if text
                else rng.choice((".so", ".png", ".gz", ".bin"))
            )
            gz.compress(_header(f"{folder}/f{n:06d}{ext}", size, 0o644, tarfile.REGTYPE))
            if text:
                for _ in range(size // _CHUNK):
                    i = rng.randrange(len(chunks))
                    gz.insert(pool[i * _CHUNK : (i + 1) * _CHUNK], chunks[i])
                if tail := size % _CHUNK:
                    offset = rng.randrange(0, len(pool) - tail)
                    gz.compress(pool[offset : offset + tail])
            else:
                data = rng.randbytes(size)
                if size >= _STORE_MIN:
                    gz.store(data)
                else:
                    gz.compress(data)
            if size % 512:
                gz.compress(bytes(512 - size % 512))
        gz.compress(bytes(1024))  # the end-of-archive marker: two zero blocks
        gz.close()
    digest = "sha256:" + out.hash.hexdigest()
    diff_id = "sha256:" + gz.uncompressed.hexdigest()
    built = BuiltLayer(plan, path, digest, out.size, diff_id, files, gz.uncompressed_size)
    tmp.rename(path)
    meta = {
        "digest": digest,
        "size": out.size,
        "diff_id": diff_id,
        "files": files,
        "uncompressed": gz.uncompressed_size,
    }
    meta_path.write_text(json.dumps(meta))
    return built


def build_layers(
    directory: Path, plans: Sequence[LayerPlan], *, workers: int | None = None
) -> dict[str, BuiltLayer]:
    """Build every plan (in parallel, largest first; present ones are reused); by plan key."""
    unique = {plan.key(): plan for plan in plans}
    todo = sorted(unique.values(), key=lambda p: -p.target)
    count = max(1, min(len(todo), workers or os.cpu_count() or 1))
    # spawn: the parent has grpc loaded, which does not like fork.
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {plan.key(): pool.submit(build_layer, directory, plan) for plan in todo}
        return {key: future.result() for key, future in futures.items()}


# -- images --------------------------------------------------------------------------------------------------
def _json_blob(document: dict[str, Any], media_type: str) -> Blob:
    data = json.dumps(document, separators=(",", ":")).encode()
    return Blob(Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)), data=data)


def image_of(layers: Sequence[BuiltLayer], *, platform: Platform = AMD64) -> Image:
    """A single-platform OCI image of ``layers`` (bottom first): config with their diff_ids, and manifest."""
    config_doc: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"layer {x.plan.name}"} for x in layers
        ],
    }
    if platform.variant:
        config_doc["variant"] = platform.variant
    config = _json_blob(config_doc, OCI_CONFIG)
    built = tuple(layer.layer() for layer in layers)
    manifest = _json_blob(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor.to_oci(),
            "layers": [layer.descriptor.to_oci() for layer in built],
        },
        OCI_MANIFEST,
    )
    return Image(platform, config, built, manifest)


__all__ = [
    "FORMAT",
    "BuiltLayer",
    "LayerPlan",
    "build_layer",
    "build_layers",
    "image_of",
    "text_pool",
]

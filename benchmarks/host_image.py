"""Runnable container images of real files, taken from this machine: nothing is downloaded.

A layer is described by a ``HostLayerPlan``: trees of this machine's files (a file, a symbolic link or a
directory, taken recursively without following links) placed at a path of the image, and small generated files
(a script, /etc/passwd). It is written as a tar (GNU format, owner root, the files' own modes and mtimes: the
standard library's ``__pycache__`` files stay valid, since Python checks the source's mtime and size) compressed
with gzip at level 6 (Go's compress/gzip default, which docker and buildkit use), streamed to disk with its
digest and diff_id computed while writing.

``program_closure`` lists what a dynamically linked program needs (its ELF interpreter and the shared libraries
``ldd`` resolves, with the symbolic links that name them) so that a layer of it runs in an otherwise empty
image; the image gets Debian's merged-/usr links (``/lib -> usr/lib`` ...), so the paths ``ldd`` prints resolve.

Built layers are kept in a directory and reused when a layer of the same content description is there: the key
is a hash of every entry's path, type, mode, size, mtime and link target (and of generated files' bytes), which
``stat`` gives without reading the files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tests.imagefactory import AMD64, Blob, Image, Layer, _HashingWriter
from wrapper.core.models import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, Platform

FORMAT = 1  # bump when the tar layout changes, so that cached layers are not taken for new ones
GZIP_LEVEL = 6
_COPY = 1 << 20
# Debian's merged /usr: what ldd prints (/lib/x86_64-linux-gnu/..., /lib64/ld-linux...) resolves through these.
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@dataclass(frozen=True)
class HostTree:
    """``source`` on this machine (file, symbolic link or directory, recursively; links are kept as links) at
    ``target`` in the image (default: the same path)."""

    source: Path
    target: str | None = None

    @property
    def image_path(self) -> str:
        return (self.target or str(self.source)).strip("/")


@dataclass(frozen=True)
class Generated:
    """A file the benchmark writes (a script, a passwd file); ``link``: a symbolic link to that target."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None


@dataclass(frozen=True)
class HostLayerPlan:
    name: str
    trees: tuple[HostTree, ...] = ()
    generated: tuple[Generated, ...] = ()


@dataclass(frozen=True)
class _Entry:
    path: str  # in the image, no leading slash
    kind: str  # "dir", "file", "link"
    mode: int
    size: int = 0
    mtime: int = 0
    link: str = ""
    source: str = ""  # a file of this machine ("" for directories, links and generated files)
    data: bytes | None = None

    def identity(self) -> list[Any]:
        digest = hashlib.sha256(self.data).hexdigest() if self.data is not None else ""
        return [self.path, self.kind, self.mode, self.size, self.mtime, self.link, digest]


@dataclass(frozen=True)
class BuiltHostLayer:
    plan_name: str
    layer: Layer
    files: int  # regular files in it
    uncompressed: int  # bytes of its tar
    sizes: dict[str, int] = field(default_factory=dict, compare=False)  # "/path" in the image -> bytes, files

    @property
    def size(self) -> int:
        return self.layer.size


def _entries(plan: HostLayerPlan) -> list[_Entry]:
    """Every entry of the layer, parents before children, each path once (the first wins), sorted within a
    directory as ``os.walk`` lists them after sorting."""
    out: dict[str, _Entry] = {}

    def parents(path: str) -> None:
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in out:
                out[parent] = _Entry(parent, "dir", 0o755)

    def add(source: Path, target: str) -> None:
        info = source.lstat()
        mode = stat.S_IMODE(info.st_mode)
        mtime = int(info.st_mtime)
        parents(target)
        if target in out:
            return
        if stat.S_ISLNK(info.st_mode):
            out[target] = _Entry(target, "link", 0o777, mtime=mtime, link=os.readlink(source))
        elif stat.S_ISDIR(info.st_mode):
            out[target] = _Entry(target, "dir", mode, mtime=mtime)
            for child in sorted(source.iterdir(), key=lambda p: p.name):
                add(child, f"{target}/{child.name}")
        elif stat.S_ISREG(info.st_mode):
            out[target] = _Entry(target, "file", mode, info.st_size, mtime, source=str(source))
        # sockets, devices and fifos are left out

    for tree in plan.trees:
        if not tree.source.exists() and not tree.source.is_symlink():
            raise FileNotFoundError(f"{tree.source} (for layer {plan.name}) does not exist on this machine")
        add(tree.source, tree.image_path)
    for gen in plan.generated:
        path = gen.path.strip("/")
        parents(path)
        if gen.link is not None:
            out[path] = _Entry(path, "link", 0o777, link=gen.link)
        else:
            out[path] = _Entry(path, "file", gen.mode, len(gen.data), data=gen.data)
    return list(out.values())


def layer_key(plan: HostLayerPlan) -> str:
    text = json.dumps([FORMAT, GZIP_LEVEL, [e.identity() for e in _entries(plan)]])
    return f"{plan.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path + ("/" if entry.kind == "dir" else ""))
    info.mode = entry.mode
    info.mtime = entry.mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "link":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link
    else:
        info.size = entry.size
    return info


def _paths(directory: Path, plan: HostLayerPlan) -> tuple[Path, Path]:
    key = layer_key(plan)
    return directory / f"{key}.tar.gz", directory / f"{key}.json"


def build_host_layer(directory: Path, plan: HostLayerPlan) -> BuiltHostLayer:
    """Write the layer (or find it already built) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = _entries(plan)
    path, meta = _paths(directory, plan)
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
    else:
        tmp = path.with_name(path.name + f".partial-{os.getpid()}")
        with tmp.open("wb") as raw:
            compressed = _HashingWriter(raw)
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=GZIP_LEVEL)
            tar_stream = _HashingWriter(gz)
            with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for entry in entries:
                    if entry.kind != "file":
                        tar.addfile(_tarinfo(entry))
                    elif entry.data is not None:
                        tar.addfile(_tarinfo(entry), io.BytesIO(entry.data))
                    else:
                        with open(entry.source, "rb") as source:
                            tar.addfile(_tarinfo(entry), source)
            gz.close()
        info = {
            "digest": compressed.digest,
            "size": compressed.size,
            "diff_id": tar_stream.digest,
            "uncompressed": tar_stream.size,
            "files": sum(1 for e in entries if e.kind == "file"),
        }
        tmp.rename(path)
        meta.write_text(json.dumps(info))
    layer = Layer(
        Descriptor(OCI_LAYER_GZIP, info["digest"], info["size"]), path=path, diff_id=info["diff_id"]
    )
    sizes = {"/" + e.path: e.size for e in entries if e.kind == "file"}
    return BuiltHostLayer(plan.name, layer, info["files"], info["uncompressed"], sizes)


def build_host_layers(directory: Path, plans: Sequence[HostLayerPlan]) -> dict[str, BuiltHostLayer]:
    """Build every plan (in parallel processes, the largest first; ones already built are found), by name."""
    missing = [plan for plan in plans if not all(p.exists() for p in _paths(directory, plan))]
    built: dict[str, BuiltHostLayer] = {}
    if missing:
        workers = max(1, min(len(missing), os.cpu_count() or 1))
        # spawn: the parent may have grpc loaded, which does not like fork.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {plan.name: pool.submit(build_host_layer, directory, plan) for plan in missing}
            built = {name: future.result() for name, future in futures.items()}
    return {plan.name: built.get(plan.name) or build_host_layer(directory, plan) for plan in plans}


@dataclass(frozen=True)
class RunConfig:
    """The image config's ``config`` object: what the container runs, as a Dockerfile would set it."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    working_dir: str = "/"
    extra: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"Env": list(self.env), "WorkingDir": self.working_dir}
        if self.entrypoint:
            doc["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            doc["Cmd"] = list(self.cmd)
        return {**doc, **self.extra}


def _json(document: dict[str, Any], media_type: str) -> Blob:
    data = json.dumps(document, separators=(",", ":")).encode()
    return Blob(Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)), data=data)


def runnable_image(layers: Sequence[BuiltHostLayer], run: RunConfig, *, platform: Platform = AMD64) -> Image:
    """A single-platform OCI image of ``layers`` (bottom first) whose config runs ``run``."""
    config = _json(
        {
            "architecture": platform.architecture,
            "os": platform.os,
            "created": "1970-01-01T00:00:00Z",
            "config": run.document(),
            "rootfs": {"type": "layers", "diff_ids": [x.layer.diff_id for x in layers]},
            "history": [
                {"created": "1970-01-01T00:00:00Z", "created_by": f"COPY {x.plan_name}"} for x in layers
            ],
        },
        OCI_CONFIG,
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor.to_oci(),
            "layers": [x.layer.descriptor.to_oci() for x in layers],
        },
        OCI_MANIFEST,
    )
    return Image(platform, config, tuple(x.layer for x in layers), manifest)


# -- what a program needs -----------------------------------------------------------------------------------
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def shared_libraries(binaries: Iterable[Path]) -> list[Path]:
    """The shared libraries (and the ELF interpreter) ``ldd`` resolves for ``binaries``, each once, as ldd
    names them (e.g. /lib/x86_64-linux-gnu/libz.so.1)."""
    found: dict[str, None] = {}
    for binary in binaries:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ldd {binary} failed: {(done.stderr or done.stdout).strip()}")
        for line in done.stdout.splitlines():
            if "not found" in line:
                raise RuntimeError(f"ldd {binary}: {line.strip()}")
            match = _LDD_LINE.search(line)
            if match:
                found.setdefault(match.group(1), None)
    return [Path(p) for p in found]


def _under_merged_usr(path: PurePosixPath) -> PurePosixPath:
    """``/lib/x86_64-linux-gnu/x`` as the image stores it (``/usr/lib/...``), through MERGED_USR."""
    parts = path.parts
    if len(parts) > 1 and parts[1] in MERGED_USR:
        return PurePosixPath("/", MERGED_USR[parts[1]], *parts[2:])
    return path


def program_closure(paths: Iterable[Path]) -> list[HostTree]:
    """``paths`` (programs, libraries) with every symbolic link on the way to the real file, each placed where
    the image (with MERGED_USR links) finds it; the directories of each path are taken as real directories."""
    trees: dict[str, HostTree] = {}
    for start in paths:
        current = PurePosixPath(start)
        for _ in range(40):  # a link chain this long is a loop
            host = Path(os.path.realpath(current.parent)) / current.name
            image_path = str(_under_merged_usr(PurePosixPath(host)))
            trees.setdefault(image_path, HostTree(host, image_path))
            if not host.is_symlink():
                break
            current = PurePosixPath(host.parent) / os.readlink(host)
    return list(trees.values())


def merged_usr_links() -> tuple[Generated, ...]:
    return tuple(Generated(name, link=target) for name, target in MERGED_USR.items())


def tree_files(path: Path) -> Iterator[Path]:
    """Regular files under ``path`` (not following links), sorted."""
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            if full.is_file() and not full.is_symlink():
                yield full


__all__ = [
    "BuiltHostLayer",
    "Generated",
    "HostLayerPlan",
    "HostTree",
    "RunConfig",
    "build_host_layer",
    "build_host_layers",
    "layer_key",
    "merged_usr_links",
    "program_closure",
    "runnable_image",
    "shared_libraries",
    "tree_files",
]

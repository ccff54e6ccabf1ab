"""The start-up benchmark's images: Debian's python3 of this machine, runnable, in two shapes.

Layers (bottom first), each built by host_image.py from this machine's files:

``base``    /usr/bin/python3.11 (and the ``python3`` link), the ELF interpreter and every shared library ``ldd``
            resolves for it and for the standard library's extension modules (lib-dynload), /etc/python3.11,
            a minimal /etc/passwd and /etc/group, Debian's merged-/usr links. Under soci's 10 MiB minimum: no
            zTOC, the snapshotter fetches it whole.
``stdlib``  /usr/lib/python3.11, the standard library with its ``__pycache__`` (valid: mtimes are kept).
``sdk``     a large tree the first shape never reads: /usr/local/go (the Go toolchain, ~270 MiB, ~68 MB with
            gzip), as model weights or unused SDKs are in real images.
``app``     the workload's script.

Shapes:

``unread-sdk``  ``python3 /app/main.py``: imports ~60 standard-library modules and exits; the SDK is not read.
``reads-all``   ``python3 /app/readall.py /usr/local/go``: reads every file of the SDK layer (and imports what it
                needs): a start that reads most of its image, where lazy loading should lose.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.host_image import (
    BuiltHostLayer,
    Generated,
    HostLayerPlan,
    HostTree,
    RunConfig,
    build_host_layers,
    merged_usr_links,
    program_closure,
    runnable_image,
    shared_libraries,
)
from tests.imagefactory import Image

PYTHON = Path("/usr/bin/python3.11")
PYTHON_LINK = Path("/usr/bin/python3")
STDLIB = Path("/usr/lib/python3.11")
PYTHON_ETC = Path("/etc/python3.11")
DEFAULT_SDK = Path("/usr/local/go")
SDK_TARGET = "/usr/local/go"
SHAPES = ("unread-sdk", "reads-all")

# ~60 standard-library modules, as an application's imports pull them in (some of them C extensions with their
# own shared libraries: _ssl, _hashlib, _sqlite3, _ctypes, _lzma, _bz2, _uuid, _decimal).
MODULES = (
    "argparse", "asyncio", "base64", "bisect", "bz2", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "ctypes", "dataclasses", "datetime", "decimal",
    "email.message", "email.parser", "enum", "functools", "gzip", "hashlib", "heapq",
    "hmac", "http.client", "http.server", "inspect", "ipaddress", "itertools", "json",
    "logging.handlers", "lzma", "multiprocessing", "pathlib", "pickle", "platform",
    "queue", "random", "secrets", "shutil", "socket", "sqlite3", "ssl",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "tomllib", "traceback", "typing", "unittest", "urllib.request", "uuid", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zoneinfo",
)  # fmt: skip

MAIN_SCRIPT = f'''"""The benchmark's workload: import what an application imports, then exit 0."""
import importlib
import time

MODULES = {MODULES!r}
started = time.perf_counter()
for name in MODULES:
    importlib.import_module(name)
print(f"imported {{len(MODULES)}} modules in {{time.perf_counter() - started:.2f}} s")
'''

READALL_SCRIPT = '''"""The benchmark's other workload: read every file under a directory (argv[1]), then exit 0."""
import os
import sys
import time
import zlib

started = time.perf_counter()
files = size = crc = 0
for root, dirs, names in os.walk(sys.argv[1]):
    dirs.sort()
    for name in sorted(names):
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
        files += 1
print(f"read {files} files, {size} bytes (crc {crc:08x}) in {time.perf_counter() - started:.2f} s")
'''

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
)


def base_plan() -> HostLayerPlan:
    """Debian's python3 binary and everything it and its extension modules link."""
    if not PYTHON.is_file():
        raise FileNotFoundError(f"{PYTHON} is not installed (Debian's python3.11 package)")
    extensions = sorted((STDLIB / "lib-dynload").glob("*.so"))
    libraries = shared_libraries([PYTHON, *extensions])
    trees = program_closure([PYTHON, PYTHON_LINK, *libraries])
    if PYTHON_ETC.is_dir():
        trees.append(HostTree(PYTHON_ETC))
    generated = (
        *merged_usr_links(),
        Generated("etc/passwd", PASSWD),
        Generated("etc/group", GROUP),
        Generated("tmp/.keep", b""),
    )
    return HostLayerPlan("python-base", tuple(trees), generated)


def stdlib_plan() -> HostLayerPlan:
    return HostLayerPlan("python-stdlib", (HostTree(STDLIB),))


def sdk_plan(sdk: Path) -> HostLayerPlan:
    return HostLayerPlan(f"sdk-{sdk.name}", (HostTree(sdk, SDK_TARGET),))


def app_plan(shape: str) -> HostLayerPlan:
    if shape == "unread-sdk":
        return HostLayerPlan("app-imports", generated=(Generated("app/main.py", MAIN_SCRIPT.encode()),))
    if shape == "reads-all":
        return HostLayerPlan("app-readall", generated=(Generated("app/readall.py", READALL_SCRIPT.encode()),))
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def run_config(shape: str) -> RunConfig:
    script = "/app/main.py" if shape == "unread-sdk" else "/app/readall.py"
    cmd = (script,) if shape == "unread-sdk" else (script, SDK_TARGET)
    return RunConfig(entrypoint=("/usr/bin/python3",), cmd=cmd, env=ENV, working_dir="/app")


@dataclass(frozen=True)
class ShapeImage:
    shape: str
    image: Image
    layers: tuple[BuiltHostLayer, ...]

    @property
    def compressed(self) -> int:
        return sum(x.size for x in self.layers)

    @property
    def uncompressed(self) -> int:
        return sum(x.uncompressed for x in self.layers)

    @property
    def files(self) -> int:
        return sum(x.files for x in self.layers)

    def describe(self) -> str:
        sizes = ", ".join(f"{x.plan_name} {x.size / 1e6:.1f} MB ({x.files} files)" for x in self.layers)
        return (
            f"{self.shape}: {self.compressed / 1e6:.1f} MB compressed, {self.uncompressed / 1e6:.0f} MB of tar, "
            f"{self.files} files; layers: {sizes}"
        )


def build_shape_images(
    layer_dir: Path, shapes: tuple[str, ...] = SHAPES, *, sdk: Path = DEFAULT_SDK
) -> dict[str, ShapeImage]:
    """The images of ``shapes``, their layers built in ``layer_dir`` (reused when already there)."""
    if not sdk.is_dir():
        raise FileNotFoundError(f"{sdk} (the large layer's files) is not a directory")
    shared = [base_plan(), stdlib_plan(), sdk_plan(sdk)]
    apps = {shape: app_plan(shape) for shape in shapes}
    built = build_host_layers(layer_dir, [*shared, *apps.values()])
    out: dict[str, ShapeImage] = {}
    for shape in shapes:
        layers = tuple(built[plan.name] for plan in [*shared, apps[shape]])
        out[shape] = ShapeImage(shape, runnable_image(layers, run_config(shape)), layers)
    return out


if __name__ == "__main__":  # build the images into a directory, e.g. to look at them
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/startup-bench-layers")
    for built_image in build_shape_images(target).values():
        print(built_image.describe())

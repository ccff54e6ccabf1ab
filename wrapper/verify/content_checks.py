"""Level 2, content: the real soci decodes each zTOC and reads files through it, and they match the layer.

For each zTOC that passed the registry checks:

* the zTOC goes into soci's content store with a carrier SOCI index v1 whose subject is the platform's
  manifest (wrapper.soci.reuse.stage_for_soci), and ``soci rebuild-db`` records it: that is how soci learns which
  layer a zTOC serves; the layer itself is pulled into containerd's content store (wrapper.image.pull, nothing else
  of the image but its manifest and config);
* ``soci ztoc info``: soci's own decoding, whose span size must match the annotation and whose file list is
  compared with the layer's tar stream, entry by entry (name, data offset, size);
* ``soci ztoc get-file`` of a sample of files (the first and last of the layer and its largest), each
  compared byte for byte (sha256 and size) with the same file read from the layer's tar stream, which is
  streamed from the registry through gzip and tarfile (never written to disk whole) while its digest is
  checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.containerd.client import ContainerdClient
from wrapper.core.errors import WrapperError
from wrapper.core.models import Descriptor, PlatformImage, ResolvedImage
from wrapper.core.options import PullOptions
from wrapper.core.progress import Reporter, human_size, short_digest
from wrapper.core.util import one_line
from wrapper.image.pull import Puller
from wrapper.registry.client import RegistryClient
from wrapper.soci.reuse import Reusable, Ztoc, stage_for_soci
from wrapper.soci.runner import Soci
from wrapper.verify.registry_checks import Image, layer_chunks
from wrapper.verify.report import DEFAULT_FILES_PER_LAYER, LayerResult
from wrapper.verify.ztocfmt import ZtocFacts

log = logging.getLogger("wrapper.verify")

__all__ = ["DEFAULT_FILES_PER_LAYER", "LayerSample", "hand_to_soci", "pull_for_content", "run_content_level"]

MAX_SAMPLE_FILE_BYTES = 256 * 1024 * 1024  # soci get-file holds the whole file in memory
# Time a `soci ztoc get-file` may take: a base, plus the file's size at a slow rate (it reads spans from
# containerd's content store and decompresses them).
GET_FILE_SECONDS = 60.0
GET_FILE_BYTES_PER_SECOND = 8 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ZtocFile:
    name: str
    offset: int
    size: int


@dataclass
class FileDigest:
    size: int
    sha256: str


@dataclass
class LayerSample:
    """Files of one layer read from its tar stream: what the deeper reads are compared with."""

    ztoc: str
    files: dict[str, FileDigest] = field(default_factory=dict)


def pull_for_content(
    registry: RegistryClient, client: ContainerdClient, image: Image, reporter: Reporter
) -> None:
    """Bring into containerd what soci (and the snapshotter) read locally: the selected platforms' manifests
    and configs, and the layers whose zTOCs passed the registry checks. Nothing else is downloaded."""
    targets = [t for t in image.targets if t.ztocs]
    if not targets:
        return
    wanted = {layer.digest for t in targets for layer, _, _ in t.ztocs.values()}
    every = {x.digest for t in targets for x in t.layers}
    resolved = ResolvedImage(
        reference=image.reference,
        target=image.top,
        index_body=image.top_body if image.top.is_index else None,
        manifests=[(t.manifest, t.body) for t in targets],
        all_platforms=[t.platform for t in image.targets],
        selected=[PlatformImage(t.platform, t.manifest, t.config, t.layers) for t in targets],
    )
    options = PullOptions(min_layer_size=0, skip_layers=frozenset(every - wanted))
    Puller(registry, client, options, reporter).run(resolved)


def hand_to_soci(soci: Soci, image: Image) -> None:
    """Every zTOC that passed the registry checks into soci's store, recorded by ``soci rebuild-db``."""
    staged = False
    for target in image.targets:
        items = []
        for digest, (layer, path, facts) in target.ztocs.items():
            report = target.result.layer(layer.digest)
            span = report.span_size if report is not None and report.span_size else facts.span_size
            ztoc = Ztoc(layer.digest, layer.media_type, span, digest, path.stat().st_size)
            items.append(Reusable(ztoc, path, "verify"))
        if items:
            stage_for_soci(soci.root, target.manifest, items)
            staged = True
    if staged:
        soci.rebuild_db()


def run_content_level(
    registry: RegistryClient,
    soci: Soci,
    image: Image,
    reporter: Reporter,
    *,
    files_per_layer: int = DEFAULT_FILES_PER_LAYER,
    work: Path,
) -> dict[str, LayerSample]:
    """The content checks of every zTOC that passed the registry checks; the tar-side samples by layer."""
    samples: dict[str, LayerSample] = {}
    # One layer after the other, in this thread: an interrupt stops the soci call under way (and what it
    # started) at once.
    for target in image.targets:
        for digest, (layer, _, facts) in target.ztocs.items():
            report = target.result.layer(layer.digest)
            assert report is not None
            sample = check_layer(registry, soci, image, layer, digest, facts, report, files_per_layer, work)
            done = "ok" if report.passed("content") else "FAILED"
            reporter.info(
                f"    {target.platform} layer {short_digest(layer.digest)}: {report.files_compared} files "
                f"compared ({human_size(report.bytes_compared)}): {done}"
            )
            if sample is not None:
                samples[layer.digest] = sample
    return samples


def check_layer(
    registry: RegistryClient,
    soci: Soci,
    image: Image,
    layer: Descriptor,
    ztoc_digest: str,
    facts: ZtocFacts,
    report: LayerResult,
    files_per_layer: int,
    work: Path,
) -> LayerSample | None:
    name = f"zTOC {ztoc_digest}"
    try:
        info = soci.ztoc_info(ztoc_digest)
    except WrapperError as exc:
        report.add("content", "ztoc-info", False, f"soci cannot decode {name}: {one_line(exc.message)}")
        return None
    files = _ztoc_files(info)
    span = info.get("span_size")
    problems = []
    if report.span_size is not None and span != report.span_size:
        problems.append(f"its span-size annotation says {report.span_size}, soci reads span size {span}")
    report.add(
        "content",
        "ztoc-info",
        not problems,
        f"{name}: " + "; ".join(problems)
        if problems
        else f"soci decodes {name}: version {info.get('version')}, span size {span}, "
        f"{info.get('num_spans')} spans, {info.get('num_files')} entries",
    )
    regular = {f.name: f for f in files}
    sample = choose_sample(list(regular.values()), files_per_layer)
    # A zTOC of another layer (its own record of the layer's size says so) is not used to read this layer:
    # its checkpoints do not fit these bytes, and soci ztoc get-file can spin on them without end.
    unreadable = facts.compressed_size != layer.size
    extracted: dict[str, FileDigest | str] = {}
    if not unreadable:
        extracted = _extract(soci, ztoc_digest, sample, work)
    try:
        tar_files, tar_digests, layer_digest = read_tar_stream(
            layer_chunks(registry, image.reference, layer.digest), layer.media_type, {f.name for f in sample}
        )
    except (WrapperError, OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        report.add("content", "layer-tar", False, f"the layer's tar stream cannot be read: {one_line(exc)}")
        return None
    report.add(
        "content",
        "layer-digest",
        layer_digest == layer.digest,
        "the layer streamed from the registry matches its digest"
        if layer_digest == layer.digest
        else f"the registry served the layer with digest {layer_digest}",
    )
    _compare_file_lists(report, name, regular, tar_files)
    mismatches, compared, nbytes = [], 0, 0
    result = LayerSample(ztoc_digest)
    for entry in sample:
        got = extracted.get(entry.name)
        want = tar_digests.get(entry.name)
        if want is None:
            mismatches.append(f"{entry.name}: not in the layer's tar stream")
            continue
        result.files[entry.name] = want
        if isinstance(got, str) or got is None:
            mismatches.append(f"{entry.name}: soci ztoc get-file failed: {got}")
        elif got.size != want.size or got.sha256 != want.sha256:
            mismatches.append(
                f"{entry.name}: read through the zTOC {got.size} bytes (sha256 {got.sha256[:12]}), "
                f"in the layer {want.size} bytes (sha256 {want.sha256[:12]})"
            )
        else:
            compared += 1
            nbytes += want.size
    report.files_compared, report.bytes_compared = compared, nbytes
    if unreadable:
        report.add(
            "content",
            "files",
            False,
            f"no file read through {name}: it is the zTOC of a layer of {facts.compressed_size} bytes, "
            f"not of this one ({layer.size} bytes)",
        )
    elif not sample:
        report.add("content", "files", True, f"{name} lists no regular file with content to compare")
    else:
        report.add(
            "content",
            "files",
            not mismatches,
            f"{name}: {len(mismatches)} of {len(sample)} files differ: " + "; ".join(mismatches[:3])
            if mismatches
            else f"{compared} files read through {name} with soci match the layer byte for byte "
            f"({human_size(nbytes)}: {', '.join(e.name for e in sample[:4])}{', …' if len(sample) > 4 else ''})",
        )
    return result


def _extract(soci: Soci, ztoc_digest: str, sample: list[ZtocFile], work: Path) -> dict[str, FileDigest | str]:
    """Each file of ``sample`` read through the zTOC by soci (``get-file``): its size and sha256, or the error.
    Each call is bounded by a time that fits the file's size; after one call runs out of time, the layer's
    other files are not tried."""
    extracted: dict[str, FileDigest | str] = {}
    with tempfile.TemporaryDirectory(prefix="get-file-", dir=work) as tmp:
        for i, entry in enumerate(sample):
            out = Path(tmp) / f"{i}"
            bounded = dataclasses.replace(
                soci, timeout=min(soci.timeout, GET_FILE_SECONDS + entry.size / GET_FILE_BYTES_PER_SECOND)
            )
            try:
                bounded.ztoc_get_file(ztoc_digest, entry.name, out)
                extracted[entry.name] = _digest_file(out)
            except WrapperError as exc:
                extracted[entry.name] = one_line(exc.message)
                if "did not finish within" in exc.message:
                    break
            finally:
                out.unlink(missing_ok=True)
    return extracted


def _ztoc_files(info: dict[str, Any]) -> list[ZtocFile]:
    out = []
    for entry in info.get("files") or []:
        if isinstance(entry, dict) and entry.get("type") == "reg":
            out.append(
                ZtocFile(str(entry.get("filename")), int(entry.get("offset", 0)), int(entry.get("size", 0)))
            )
    return out


def choose_sample(files: list[ZtocFile], count: int) -> list[ZtocFile]:
    """Up to ``count`` files: the first and the last of the layer, and its largest (files with content first;
    none over the sample size limit)."""
    candidates = [f for f in files if 0 < f.size <= MAX_SAMPLE_FILE_BYTES] or [
        f for f in files if f.size <= MAX_SAMPLE_FILE_BYTES
    ]
    if count <= 0 or not candidates:
        return []
    by_offset = sorted(candidates, key=lambda f: f.offset)
    by_size = sorted(candidates, key=lambda f: (-f.size, f.offset))
    edge = max(1, count // 3)
    chosen: list[ZtocFile] = []
    for f in [*by_offset[:edge], *by_offset[-edge:], *by_size]:
        if f not in chosen:
            chosen.append(f)
        if len(chosen) >= count:
            break
    return sorted(chosen, key=lambda f: f.offset)


def _digest_file(path: Path) -> FileDigest:
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return FileDigest(size, hasher.hexdigest())


class _ChunkReader:
    """A read()-able view of an iterator of byte chunks, hashing every byte it hands out."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = b""
        self._pos = 0
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n if n >= 0 else None
        while want is None or want > 0:
            if self._pos >= len(self._chunk):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._chunk, self._pos = chunk, 0
            end = len(self._chunk) if want is None else min(len(self._chunk), self._pos + want)
            part = self._chunk[self._pos : end]
            self._pos = end
            parts.append(part)
            if want is not None:
                want -= len(part)
        data = b"".join(parts)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_HASH_CHUNK):
            pass


def read_tar_stream(
    chunks: Iterator[bytes], media_type: str, wanted: set[str]
) -> tuple[dict[str, ZtocFile], dict[str, FileDigest], str]:
    """Walk a layer's tar stream: every regular file (name, data offset, size), the sha256 of the ``wanted``
    files, and the digest of the layer's bytes as served."""
    raw = _ChunkReader(chunks)
    mode = "r|gz" if "gzip" in media_type else "r|"
    files: dict[str, ZtocFile] = {}
    digests: dict[str, FileDigest] = {}
    with tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
        for member in tar:
            if not member.isreg():
                continue
            files[member.name] = ZtocFile(member.name, member.offset_data, member.size)
            if member.name in wanted:
                stream = tar.extractfile(member)
                assert stream is not None
                hasher, size = hashlib.sha256(), 0
                while chunk := stream.read(_HASH_CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
                digests[member.name] = FileDigest(size, hasher.hexdigest())
    raw.drain()  # the end of the archive and the gzip trailer count for the digest too
    return files, digests, "sha256:" + raw.hasher.hexdigest()


def _compare_file_lists(
    report: LayerResult, name: str, ztoc_files: dict[str, ZtocFile], tar_files: dict[str, ZtocFile]
) -> None:
    only_ztoc = sorted(set(ztoc_files) - set(tar_files))
    only_tar = sorted(set(tar_files) - set(ztoc_files))
    moved = sorted(n for n in set(ztoc_files) & set(tar_files) if ztoc_files[n] != tar_files[n])
    problems = []
    if only_ztoc:
        problems.append(f"{len(only_ztoc)} files the layer does not have ({', '.join(only_ztoc[:3])})")
    if only_tar:
        problems.append(f"not {len(only_tar)} files the layer has ({', '.join(only_tar[:3])})")
    if moved:
        n = moved[0]
        problems.append(
            f"{len(moved)} files at another offset or size (e.g. {n}: zTOC {ztoc_files[n].offset}+"
            f"{ztoc_files[n].size}, layer {tar_files[n].offset}+{tar_files[n].size})"
        )
    report.add(
        "content",
        "file-list",
        not problems,
        f"{name} lists " + "; ".join(problems)
        if problems
        else f"{name} lists the layer's {len(tar_files)} files at their offsets and sizes",
    )

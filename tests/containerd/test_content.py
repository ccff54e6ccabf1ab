"""Content store writes (resumable, pipelined), reads and labels against each supported real containerd."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.content import CHUNK_SIZE
from wrapper.containerd.daemon import ManagedContainerd
from wrapper.core.errors import ContainerdError, NotFoundError

MiB = 1024 * 1024


class SourceBroke(Exception):
    """Raised by a test source to cut a write midway."""


def _blob(size: int, seed: int) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


class Source:
    """A write() source over ``data`` that records the offsets asked for and can fail after N chunks."""

    def __init__(self, data: bytes, *, chunk: int = CHUNK_SIZE, fail_after: int | None = None) -> None:
        self.data = memoryview(data)
        self.chunk = chunk
        self.fail_after = fail_after
        self.offsets: list[int] = []

    def __call__(self, offset: int) -> Iterator[bytes]:
        self.offsets.append(offset)
        for n, start in enumerate(range(offset, len(self.data), self.chunk)):
            if self.fail_after is not None and n == self.fail_after:
                raise SourceBroke(f"broke after {n} chunks")
            yield bytes(self.data[start : start + self.chunk])


def _digest_of_stream(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def test_64mib_write_cut_midway_resumes_and_reads_back(any_containerd_client: ContainerdClient) -> None:
    content = any_containerd_client.content
    data, digest = _blob(64 * MiB, seed=1)
    ref = "test-64mib"
    with any_containerd_client.lease():
        broken = Source(data, fail_after=20)
        progress: list[int] = []
        with pytest.raises(SourceBroke):
            content.write(ref, broken, total=len(data), expected=digest, on_progress=progress.append)
        held = content.status(ref)
        assert held is not None and held > 0
        assert held == sum(progress) == 20 * MiB
        assert not content.exists(digest)

        resumed = Source(data)
        progress.clear()
        started = time.monotonic()
        result = content.write(
            ref,
            resumed,
            total=len(data),
            expected=digest,
            labels={"test": "64mib"},
            on_progress=progress.append,
        )
        elapsed = time.monotonic() - started
        print(f"resumed write: {result.bytes_sent / elapsed / 1e6:.0f} MB/s")
        assert resumed.offsets == [held]
        assert result.offset_resumed_from == held
        assert result.bytes_sent == len(data) - held == sum(progress)
        assert result.committed and not result.already_existed
        assert content.status(ref) is None

        info = content.info(digest)
        assert (info.digest, info.size, info.labels) == (digest, len(data), {"test": "64mib"})
        assert _digest_of_stream(content.read(digest)) == (digest, len(data))
        part = b"".join(content.read(digest, offset=5 * MiB + 3, size=1000))
        assert part == data[5 * MiB + 3 : 5 * MiB + 1003]


def test_small_uneven_source_chunks_are_regrouped(any_containerd_client: ContainerdClient) -> None:
    data, digest = _blob(3 * MiB + 17, seed=2)
    with any_containerd_client.lease():
        sizes: list[int] = []
        result = any_containerd_client.content.write(
            "uneven", Source(data, chunk=100_000), total=len(data), expected=digest, on_progress=sizes.append
        )
        assert result.bytes_sent == len(data)
        assert sizes == [MiB, MiB, MiB, 17]
        assert _digest_of_stream(any_containerd_client.content.read(digest)) == (digest, len(data))


def test_a_source_that_breaks_between_chunk_marks_keeps_every_byte(
    any_containerd_client: ContainerdClient,
) -> None:
    """The bytes a source gave after its last full 1 MiB chunk reach the ingest too, so a resume starts at the
    exact offset the source reached; a source that always breaks before the next 1 MiB mark still progresses."""
    content = any_containerd_client.content
    data, digest = _blob(3 * MiB + 5, seed=8)
    ref = "uneven-break"
    with any_containerd_client.lease():
        progress: list[int] = []
        broken = Source(data, chunk=300_000, fail_after=5)  # 1,500,000 bytes: 1 MiB and a part
        with pytest.raises(SourceBroke):
            content.write(ref, broken, total=len(data), expected=digest, on_progress=progress.append)
        assert content.status(ref) == 1_500_000 == sum(progress)
        assert progress == [MiB, 1_500_000 - MiB]

        # Each attempt breaks after 700,000 bytes, before the next 1 MiB mark: every one still moves on.
        held = [1_500_000]
        while (offset := held[-1]) + 700_000 < len(data):
            with pytest.raises(SourceBroke):
                content.write(
                    ref, Source(data, chunk=100_000, fail_after=7), total=len(data), expected=digest
                )
            held.append(int(content.status(ref) or 0))
            assert held[-1] == offset + 700_000
        last = Source(data, chunk=100_000)
        result = content.write(ref, last, total=len(data), expected=digest)
        assert last.offsets == [held[-1]]
        assert result.offset_resumed_from == held[-1]
        assert result.bytes_sent == len(data) - held[-1]
        assert result.committed
        assert _digest_of_stream(content.read(digest)) == (digest, len(data))


def test_existing_blob_is_not_sent_again(any_containerd_client: ContainerdClient) -> None:
    data, digest = _blob(100_000, seed=3)
    with any_containerd_client.lease():
        first = any_containerd_client.content.write("dup-1", Source(data), total=len(data), expected=digest)
        assert first.committed
        again = Source(data)
        second = any_containerd_client.content.write("dup-2", again, total=len(data), expected=digest)
    assert second.already_existed and not second.committed
    assert second.bytes_sent == 0
    assert again.offsets == []


def test_wrong_digest_fails_and_commits_nothing(any_containerd_client: ContainerdClient) -> None:
    content = any_containerd_client.content
    data, real = _blob(2 * MiB, seed=4)
    wrong = "sha256:" + "0" * 64
    with any_containerd_client.lease(), pytest.raises(ContainerdError) as info:
        content.write("wrong", Source(data), total=len(data), expected=wrong)
    message = str(info.value)
    assert "\n" not in message
    assert "unexpected commit digest" in message and real in message
    assert not content.exists(real)
    assert not content.exists(wrong)
    assert content.status("wrong") is None
    assert real not in content.list_digests()


def test_labels_update_merges(any_containerd_client: ContainerdClient) -> None:
    content = any_containerd_client.content
    data, digest = _blob(1000, seed=5)
    with any_containerd_client.lease():
        content.write("labels", Source(data), total=len(data), expected=digest, labels={"a": "1", "b": "2"})
        info = content.update_labels(digest, {"b": "changed", "c": "3"})
        assert info.labels == {"a": "1", "b": "changed", "c": "3"}
        assert content.info(digest).labels == {"a": "1", "b": "changed", "c": "3"}
        assert content.update_labels(digest, {"a": ""}).labels == {"b": "changed", "c": "3"}


def test_abort_drops_the_ingest_and_delete_removes_the_blob(any_containerd_client: ContainerdClient) -> None:
    content = any_containerd_client.content
    data, digest = _blob(3 * MiB, seed=6)
    with any_containerd_client.lease():
        with pytest.raises(SourceBroke):
            content.write("abort-me", Source(data, fail_after=1), total=len(data), expected=digest)
        assert content.status("abort-me") == MiB
        content.abort("abort-me")
        assert content.status("abort-me") is None
        # Starting over: the new write sends everything.
        assert content.write("abort-me", Source(data), total=len(data), expected=digest).bytes_sent == len(
            data
        )
        assert digest in content.list_digests()
        content.delete(digest)
        assert not content.exists(digest)
    with pytest.raises(NotFoundError):
        content.info(digest)
    with pytest.raises(NotFoundError):
        b"".join(content.read(digest))


def test_daemon_killed_midway_then_resumed_after_restart(tmp_path: Path, any_containerd_bin: str) -> None:
    data, digest = _blob(16 * MiB, seed=7)
    work = tmp_path / "daemon"
    first = ManagedContainerd(work, binary=any_containerd_bin, keep_work_dir=True)
    with first, ContainerdClient(first.address, "resume") as client:
        pid = first.pid
        assert pid is not None

        def killing_source(offset: int) -> Iterator[bytes]:
            for n, start in enumerate(range(offset, len(data), MiB)):
                if n == 10:
                    # Kill the daemon once it has stored part of the blob.
                    deadline = time.monotonic() + 10
                    while not client.content.status("survivor") and time.monotonic() < deadline:
                        time.sleep(0.01)
                    os.kill(pid, signal.SIGKILL)
                yield data[start : start + MiB]

        with pytest.raises(ContainerdError) as info:
            client.content.write("survivor", killing_source, total=len(data), expected=digest)
        assert "\n" not in str(info.value)

    # The ingest lives on disk in the work directory; a new daemon there picks it up.
    second = ManagedContainerd(work, binary=any_containerd_bin)
    with second, ContainerdClient(second.address, "resume") as client:
        held = client.content.status("survivor")
        assert held is not None and 0 < held < len(data)
        with client.lease():
            result = client.content.write("survivor", Source(data), total=len(data), expected=digest)
            assert result.offset_resumed_from == held
            assert result.bytes_sent == len(data) - held
            assert _digest_of_stream(client.content.read(digest)) == (digest, len(data))
    # The directory existed before the second daemon started, so only its contents went away.
    assert list(work.iterdir()) == []

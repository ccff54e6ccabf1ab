"""The pieces of ``startup`` that need no containerd: chain IDs and CRI labels, reading a file from a root
filesystem's layers, the recorder's event parsing and list, the verdict, the output pipes, the counting proxy
and the port probe (real FIFOs, sockets and HTTP servers on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from wrapper.containerd.mounts import Mount
from wrapper.core.errors import ContainerdError, ExitCode, MissingDependencyError
from wrapper.core.models import Descriptor
from wrapper.core.options import prefetch_list
from wrapper.startup.daemon import check_can_run
from wrapper.startup.meter import MeteredMirror
from wrapper.startup.netns import PortProbe, accepts
from wrapper.startup.recorder import FAN_OPEN, FAN_OPEN_EXEC, OpenedFiles, parse_events, write_prefetch_list
from wrapper.startup.report import VariantReport, not_lazy_warning, verdict
from wrapper.startup.rootfs import CRI_PREFIX, LayerOutcome, chain_ids, cri_labels, read_image_file
from wrapper.startup.stdio import OutputPipes


def _digest(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def test_chain_ids_follow_the_image_spec() -> None:
    a, b, c = _digest(1), _digest(2), _digest(3)
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def test_cri_labels_name_the_layer_and_as_many_following_layers_as_fit() -> None:
    layers = [Descriptor("m", _digest(i), i) for i in range(100)]
    labels = cri_labels("reg/app:1", "sha256:man", layers, 2)
    assert labels[CRI_PREFIX + "image-ref"] == "reg/app:1"
    assert labels[CRI_PREFIX + "manifest-digest"] == "sha256:man"
    assert labels[CRI_PREFIX + "layer-digest"] == layers[2].digest
    listed = labels[CRI_PREFIX + "image-layers"].split(",")
    assert listed[0] == layers[2].digest and listed == [x.digest for x in layers[2 : 2 + len(listed)]]
    assert len(CRI_PREFIX + "image-layers") + len(labels[CRI_PREFIX + "image-layers"]) <= 4096
    assert len(listed) < 98, "100 digests do not fit in one label"


def test_a_file_is_read_from_the_topmost_layer_that_has_it(tmp_path: Path) -> None:
    upper, top, bottom = (tmp_path / n for n in ("upper", "top", "bottom"))
    for d in (upper, top, bottom):
        (d / "etc").mkdir(parents=True)
    (bottom / "etc" / "passwd").write_text("bottom")
    (bottom / "etc" / "group").write_text("bottom group")
    (top / "etc" / "passwd").write_text("top")
    os.mknod(top / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout: deleted
    overlay = Mount(
        "overlay", "overlay", options=(f"upperdir={upper}", f"lowerdir={top}:{bottom}", "workdir=/w")
    )
    reach = Path
    assert read_image_file([overlay], "/etc/passwd", reach) == "top"
    assert read_image_file([overlay], "/etc/group", reach) is None
    assert read_image_file([overlay], "/etc/shadow", reach) is None
    assert read_image_file([Mount("bind", str(bottom))], "etc/group", reach) == "bottom group"
    (upper / "etc" / "passwd").write_text("upper")
    assert read_image_file([overlay], "/etc/passwd", reach) == "upper"


def _event(mask: int, fd: int, pid: int, extra: bytes = b"") -> bytes:
    header = struct.pack("=IBBHQii", 24 + len(extra), 3, 0, 24, mask, fd, pid)
    return header + extra


def test_fanotify_events_are_parsed_and_the_list_keeps_first_access_order() -> None:
    buffer = (
        _event(FAN_OPEN | FAN_OPEN_EXEC, 5, 100)
        + _event(FAN_OPEN, 6, 101, b"\0" * 8)
        + _event(FAN_OPEN, -1, 1)
    )
    assert parse_events(buffer) == [(FAN_OPEN | FAN_OPEN_EXEC, 5, 100), (FAN_OPEN, 6, 101), (FAN_OPEN, -1, 1)]
    assert parse_events(buffer[:30]) == [(FAN_OPEN | FAN_OPEN_EXEC, 5, 100)]
    files = OpenedFiles()
    for path in ("/bin/busybox", "/etc/a.txt", "/bin/busybox", "/tmp/x (deleted)", "relative", "/etc/b.txt"):
        files.add(path)
    assert files.paths() == ["/bin/busybox", "/etc/a.txt", "/etc/b.txt"]


def test_the_recorded_list_is_what_index_reads_as_a_prefetch_list(tmp_path: Path) -> None:
    path = tmp_path / "out" / "prefetch.json"
    write_prefetch_list(path, ["/bin/busybox", "/etc/a.txt"])
    assert json.loads(path.read_text()) == ["/bin/busybox", "/etc/a.txt"]
    assert prefetch_list([], path) == ("/bin/busybox", "/etc/a.txt")


def _variant(name: str, total: float, fetched: int, *, lazy_layers: int = 1) -> VariantReport:
    report = VariantReport(name, "x", total_seconds=total, bytes_fetched=fetched)
    report.layers = [LayerOutcome("d", 1, "lazy" if i < lazy_layers else "remote") for i in range(2)]
    return report


def test_the_verdict_says_sooner_or_later() -> None:
    line, loses = verdict(_variant("lazy", 1.0, 3 << 20), _variant("full", 4.0, 100 << 20))
    assert not loses
    assert "3.00 s sooner" in line and "0.25x" in line and "3.0 MiB fetched instead of 100.0 MiB" in line
    line, loses = verdict(_variant("lazy", 5.0, 90 << 20), _variant("full", 4.0, 100 << 20))
    assert loses and "1.00 s LATER" in line and "indexing does not pay for this image" in line


def test_an_image_not_loaded_lazily_gets_the_v1_advice() -> None:
    assert not_lazy_warning(_variant("lazy", 1, 1)) is None
    warning = not_lazy_warning(_variant("lazy", 1, 1, lazy_layers=0))
    assert warning is not None and "[pull_modes.soci_v1] enable = true" in warning and "V2" in warning


def test_output_pipes_hand_over_lines_and_keep_a_tail(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    pipes = OutputPipes(tmp_path / "io", lambda stream, text: lines.append((stream, text)))
    pipes.open()
    io = pipes.task_io
    assert Path(io.stdout).is_fifo() and Path(io.stderr).is_fifo() and io.stdin == ""
    with open(io.stdout, "wb") as out, open(io.stderr, "wb") as err:
        out.write(b"first\nsecond\r\npart")
        out.flush()
        err.write(b"oops\n")
        err.flush()
        out.write(b"ial\nno newline at the end")
    pipes.close(timeout=5)
    assert ("stdout", "first") in lines and ("stdout", "second") in lines and ("stderr", "oops") in lines
    assert (
        lines.index(("stdout", "first"))
        < lines.index(("stdout", "second"))
        < lines.index(("stdout", "partial"))
    )
    assert ("stdout", "no newline at the end") in lines
    assert "stderr: oops" in pipes.tail() and pipes.bytes["stdout"] == len(
        b"first\nsecond\r\npartial\nno newline at the end"
    )
    assert not Path(io.stdout).exists() and not Path(io.stderr).exists()


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A registry stand-in for the proxy's own logic: blobs, a redirect to another server, an auth challenge."""

    other = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/v2/app/blobs/"):
            self.send_response(307)
            self.send_header("Location", f"{self.other}/storage/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/storage/blob":
            assert "Authorization" not in self.headers, "credentials must not follow a redirect to storage"
            body = b"x" * 100_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture
def upstream() -> Iterator[str]:
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream) for _ in range(2)]
    _Upstream.other = f"http://127.0.0.1:{servers[1].server_port}"
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield f"http://127.0.0.1:{servers[0].server_port}"
    for s in servers:
        s.shutdown()
        s.server_close()


def test_the_meter_forwards_and_counts_every_body_byte(upstream: str) -> None:
    with MeteredMirror(upstream) as mirror:
        http = urllib3.PoolManager()
        base = f"http://{mirror.address}"
        challenge = http.request("GET", f"{base}/v2/", redirect=False)
        assert challenge.status == 401 and challenge.headers["WWW-Authenticate"] == 'Basic realm="x"'
        doc = http.request(
            "GET", f"{base}/v2/app/manifests/v1?ns=reg", headers={"Authorization": "Basic abc"}
        )
        assert json.loads(doc.data) == {"path": "/v2/app/manifests/v1?ns=reg", "auth": "Basic abc"}
        blob = http.request("GET", f"{base}/v2/app/blobs/sha256:1", headers={"Authorization": "Basic abc"})
        assert blob.status == 200 and blob.data == b"x" * 100_000, "the redirect to storage is followed"
        head = http.request("HEAD", f"{base}/v2/app/manifests/v1")
        assert head.status == 200 and head.data == b""
        fetched, requests = mirror.meter.snapshot()
    assert fetched == len(doc.data) + 100_000
    assert requests == 4


def test_the_port_probe_connects_in_a_network_namespace() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert accepts(port)
        ready = threading.Event()
        errors: list[str] = []
        probe = PortProbe(Path("/proc/self/ns/net"), port, ready.set, errors.append)
        probe.start()
        assert ready.wait(5) and not errors
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    assert not accepts(closed)
    errors = []
    probe = PortProbe(Path("/proc/self/ns/no-such-namespace"), closed, lambda: None, errors.append)
    probe.start()
    probe.join(5)
    assert errors and "cannot enter the container's network namespace" in errors[0]


def _programs(tmp_path: Path, *names: str) -> Path:
    """A directory holding executables of these names (the only PATH of a check)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("missing", ["containerd", "runc", "containerd-shim-runc-v2"])
def test_running_a_container_needs_containerd_runc_and_its_shim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    names = [n for n in ("containerd", "runc", "containerd-shim-runc-v2") if n != missing]
    monkeypatch.setenv("PATH", str(_programs(tmp_path, *names)))
    with pytest.raises(MissingDependencyError, match=rf"startup .*{missing}") as caught:
        check_can_run("containerd", what="startup", root_hint="")
    assert caught.value.exit_code == ExitCode.MISSING_DEPENDENCY


def test_running_a_container_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_programs(tmp_path, "containerd", "runc", "containerd-shim-runc-v2")))
    check_can_run("containerd", what="startup", root_hint="")  # as root: all there
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ContainerdError, match=r"--record-prefetch .* needs root") as caught:
        check_can_run("containerd", what="--record-prefetch", root_hint="run as root")
    assert caught.value.hint == "run as root"

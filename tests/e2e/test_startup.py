"""``soci-wrapper startup`` end to end: real containerd (Debian's 1.6, and 2.x for the lazy start), runc and its
shim, a real registry, soci-wrapper's own V2 index and the real soci-snapshotter-grpc (FUSE).

The image is runnable: Debian's busybox-static as its shell, two small files the command reads in an indexed
layer, and a large layer it never reads (as model weights or unused SDKs are). Everything is started through
the CLI in a child process, as a user would, and afterwards nothing of the run may be left: no process, no
mount, no file in the work directory, nothing new in /run/containerd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.deps import unavailable
from tests.fixtures.registry import RegistryServer, start_registry, start_tls_registry
from tests.fixtures.snapshotter import snapshotter_program
from tests.helpers import ROOT, process_tree, processes, run_cli, still_running
from tests.imagefactory import FileSpec, Image, LayerSpec, build_image, push_image
from wrapper.core.reference import Reference
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "sleep", "id", "httpd", "grep", "test", "echo")
READ_FILES = ["/app/read-1.txt", "/app/read-2.txt"]
# Read by the default command: the shell and cat are busybox, exec'd; then the two files.
RECORDED = ["/bin/busybox", *READ_FILES]
DEFAULT_COMMAND = ["/bin/sh", "-c", "cat /app/read-1.txt /app/read-2.txt > /dev/null; echo done"]
MIB = 1 << 20


def _runnable_layers() -> list[LayerSpec]:
    if not BUSYBOX.is_file():
        unavailable("Debian's busybox-static is not installed (/bin/busybox): run scripts/bootstrap.sh")
    shell = (
        FileSpec("bin/busybox", 0, 0o755, data=BUSYBOX.read_bytes()),
        *(FileSpec(f"bin/{name}", 0, link="busybox") for name in APPLETS),
        FileSpec(
            "etc/passwd",
            0,
            data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/sh\n",
        ),
        FileSpec("etc/group", 0, data=b"root:x:0:\nnogroup:x:65534:\n"),
    )
    app = (
        FileSpec("app/read-1.txt", 0, data=b"one\n" * 1000),
        FileSpec("app/read-2.txt", 0, data=b"two\n" * 1000),
        FileSpec("app/unread.bin", 12 * MIB),
    )
    return [
        LayerSpec(0, files=shell, seed=7001),  # small: no zTOC, the snapshotter fetches it whole
        LayerSpec(24 * MIB, seed=7002),  # large, never read
        LayerSpec(0, files=app, seed=7003),  # indexed, two small files read
    ]


@dataclass
class World:
    registry: RegistryServer
    image: Image
    ref: Reference  # the plain image
    nobody: Reference  # the same layers, run as the image's user "nobody"

    def cli(self, *args: str, work: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cli("startup", "--work-dir", str(work), *args, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        unavailable("startup runs containers in a containerd of its own: it needs root")
    if shutil.which("runc") is None or shutil.which("containerd-shim-runc-v2") is None:
        unavailable("runc and containerd-shim-runc-v2 are missing (Debian's runc and containerd packages)")
    base = tmp_path_factory.mktemp("startup")
    image = build_image(
        base / "layers",
        _runnable_layers(),
        run_config={"Cmd": DEFAULT_COMMAND, "WorkingDir": "/app", "Env": ["PATH=/bin", "FROM_IMAGE=yes"]},
    )
    as_nobody = build_image(
        base / "layers", _runnable_layers(), run_config={"Cmd": DEFAULT_COMMAND, "User": "nobody"}
    )
    registry = start_registry(base / "registry")
    try:
        client = RegistryClient(CredentialStore(), plain_http=True)
        ref = Reference(registry.host, "startup/app", tag="v1")
        push_image(client, ref, image)
        nobody = Reference(registry.host, "startup/app", tag="nobody")
        push_image(client, nobody, as_nobody)
        yield World(registry, image, ref, nobody)
    finally:
        registry.stop()


def _report(proc: subprocess.CompletedProcess[str], code: int = 0) -> dict[str, Any]:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    report = json.loads(proc.stdout)
    assert isinstance(report, dict)
    return report


def _run_containerd_entries() -> set[str]:
    try:
        return set(os.listdir("/run/containerd"))
    except FileNotFoundError:
        return set()


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """The run's --work-dir; afterwards it must be empty, with no process or mount of the run left."""
    directory = tmp_path / "work"
    directory.mkdir()
    before = _run_containerd_entries()
    yield directory
    assert_nothing_left(directory, before)


def assert_nothing_left(directory: Path, run_containerd_before: set[str]) -> None:
    left = [p.cmdline for p in processes(directory)]
    assert left == [], f"processes of the run still running: {left}"
    mounts = [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(directory) in line
    ]
    assert mounts == [], f"mounts of the run left: {mounts}"
    assert list(directory.iterdir()) == [], f"files of the run left: {list(directory.iterdir())}"
    assert _run_containerd_entries() <= run_containerd_before, "new entries in the host's /run/containerd"


# -- the full pull (containerd 1.6, overlayfs) -----------------------------------------------------------------------
def test_full_pull_start_records_exactly_the_files_read(world: World, work: Path, tmp_path: Path) -> None:
    record = tmp_path / "prefetch.json"
    report = _report(world.cli(str(world.ref), "--no-lazy", "--record", str(record), "--json", work=work))
    assert report["args"] == DEFAULT_COMMAND
    assert report["readiness"] == "it exits with status 0"
    (full,) = report["variants"]
    assert full["name"] == "full" and full["snapshotter"] == "overlayfs" and full["exit_status"] == 0
    assert [layer["how"] for layer in full["layers"]] == ["unpacked"] * 3
    layer_bytes = sum(layer.size for layer in world.image.layers)
    assert layer_bytes <= full["bytes_fetched"] < layer_bytes + 64 * 1024, "layers, config and manifest"
    assert full["pull_seconds"] > 0 and full["ready_seconds"] > 0
    assert full["total_seconds"] >= full["pull_seconds"] + full["ready_seconds"] - 0.01
    assert report["recorded"] == {"file": str(record), "files": RECORDED}
    assert json.loads(record.read_text()) == RECORDED
    assert report["verdict"] is None and report["warnings"] == []


def test_env_workdir_and_a_command_after_dashes(world: World, work: Path) -> None:
    """The command after -- replaces Cmd; --env adds to the image's Env; WorkingDir applies."""
    script = 'echo "$FROM_IMAGE $GREETING $(id -u):$(id -g) $(pwd) $HOME"; sleep 30'
    proc = world.cli(
        str(world.ref), "--no-lazy", "--json", "--env", "GREETING=hi there",
        "--ready-log", r"^yes hi there 0:0 /app /$", "--timeout", "30",
        "--", "/bin/sh", "-c", script, work=work,
    )  # fmt: skip
    report = _report(proc)
    assert report["args"] == ["/bin/sh", "-c", script]
    assert report["variants"][0]["exit_status"] is None, "ready before it exited: then it was stopped"


def test_the_images_named_user_is_resolved_from_its_passwd(world: World, work: Path) -> None:
    proc = world.cli(
        str(world.nobody), "--no-lazy", "--json", "--ready-log", r"^65534:65534 /nonexistent /$",
        "--timeout", "30", "--", "/bin/sh", "-c", 'echo "$(id -u):$(id -g) $HOME $(pwd)"; sleep 30', work=work,
    )  # fmt: skip
    _report(proc)


def test_the_container_is_confined(world: World, work: Path) -> None:
    """Its own network namespace with loopback only, containerd's default capabilities, no new privileges, no
    host mount: the line that says so is printed only when every check passes."""
    checks = " && ".join(
        [
            'test "$(grep -c : /proc/net/dev)" = 1',  # one interface
            "grep -q ' lo:' /proc/net/dev",
            r"grep -q '^CapEff:.00000000a80425fb$' /proc/self/status",
            r"grep -q '^CapBnd:.00000000a80425fb$' /proc/self/status",
            r"grep -q '^NoNewPrivs:.1$' /proc/self/status",
            "! grep -q ' /tmp ' /proc/self/mounts",
            "! grep -qi ' bind' /proc/self/mountinfo",
            'test "$(id -u)" = 0',
        ]
    )
    proc = world.cli(
        str(world.ref), "--no-lazy", "--json", "--ready-log", "^confined$", "--timeout", "20",
        "--", "/bin/sh", "-c", f"{checks} && echo confined; sleep 30", work=work,
    )  # fmt: skip
    _report(proc)


def test_ready_port_is_probed_in_the_containers_network_namespace(world: World, work: Path) -> None:
    """The host listens on the same port all along: a probe in the host's namespace would be ready at once.
    The container opens it after a second."""
    with socket.socket() as host:
        host.bind(("127.0.0.1", 0))
        host.listen()
        port = host.getsockname()[1]
        proc = world.cli(
            str(world.ref), "--no-lazy", "--json", "--ready-port", str(port), "--timeout", "30",
            "--", "/bin/sh", "-c", f"sleep 1; exec httpd -f -p 127.0.0.1:{port}", work=work,
        )  # fmt: skip
    full = _report(proc)["variants"][0]
    assert full["ready_seconds"] >= 1.0, "ready before the container listened: probed in the wrong namespace"


def test_a_failing_or_slow_container_is_exit_13(world: World, work: Path) -> None:
    proc = world.cli(
        str(world.ref), "--no-lazy", "--", "/bin/sh", "-c", "echo about to fail; exit 3", work=work
    )
    assert proc.returncode == 13, proc.stderr
    assert "exited with status 3 before it was ready" in proc.stderr
    assert "stdout: about to fail" in proc.stderr
    proc = world.cli(
        str(world.ref),
        "--no-lazy",
        "--timeout",
        "1",
        "--ready-log",
        "never",
        "--",
        "/bin/sleep",
        "60",
        work=work,
    )
    assert proc.returncode == 13, proc.stderr
    assert "was not ready within 1 s (a line of its output matches 'never')" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ready-log", "x", "--ready-port", "80"], "--ready-log and --ready-port exclude each other"),
        (["--ready-log", "("], "is not a valid regular expression"),
        (["--ready-port", "70000"], "is not a TCP port"),
        (["--env", "NOVALUE"], "is not KEY=VALUE"),
        (["--containerd-address", "/run/x.sock"], "--containerd-address is not supported"),
        (
            [
                "--",
            ],
            "nothing after --",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(world: World, work: Path, args: list[str], message: str) -> None:
    proc = world.cli(str(world.ref), *args, work=work)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def _wait_for_the_container(cli: subprocess.Popen[str]) -> dict[int, int]:
    """Until the container's ``sleep 120`` runs; every process of the run then (pid -> start time)."""
    deadline = time.monotonic() + 60
    everything: dict[int, int] = {}
    while time.monotonic() < deadline and cli.poll() is None:
        everything = process_tree(cli.pid)  # the shim and the container's processes are in it
        if any(p.argv == ("sleep", "120") for p in processes() if p.pid in everything):
            break
        time.sleep(0.05)
    running = {p.pid: p.cmdline for p in processes() if p.pid in everything}
    assert any("containerd-shim-runc-v2" in c for c in running.values()), f"no container: {running}"
    return everything


def _terminate_mid_run(
    argv: list[str], check: Callable[[dict[int, int]], None] | None = None
) -> tuple[dict[int, int], str]:
    """Run the CLI, SIGTERM it once the container runs (after ``check``); exit 130 and nothing of the run left
    running. Every process of the run, and the CLI's standard error."""
    cli = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        everything = _wait_for_the_container(cli)
        if check is not None:
            check(everything)
        cli.send_signal(signal.SIGTERM)
        _, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, stderr
    assert still_running(everything) == {}, "processes of the run outlived it"
    return everything, stderr


def test_sigterm_while_the_container_runs_stops_everything(world: World, work: Path) -> None:
    argv = [sys.executable, "-m", "wrapper.cli.main", "startup", str(world.ref), "--no-lazy", "--work-dir", str(work),
            "--ready-log", "never", "--", "/bin/sh", "-c", "echo started; sleep 120"]  # fmt: skip
    _, stderr = _terminate_mid_run(argv)
    assert "interrupted" in stderr


# -- lazily, through soci-snapshotter-grpc -----------------------------------------------------------------------------
@dataclass
class Lazy:
    """The image's SOCI-enabled tag (a V2 index made by soci-wrapper), and the programs a lazy start needs."""

    ref: Reference
    containerd2: str
    snapshotter: str

    def args(self, *, containerd: str | None = None) -> list[str]:
        return ["--containerd-bin", containerd or self.containerd2, "--snapshotter-bin", self.snapshotter]


@pytest.fixture(scope="module")
def lazy(world: World, soci_bin: str, containerd2_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Lazy:
    snapshotter = snapshotter_program()
    work = tmp_path_factory.mktemp("index")
    proc = run_cli(
        "index", str(world.ref), "--soci-version", "V2", "--output-tag", "v1-soci", "--soci-bin", soci_bin,
        "--work-dir", str(work), "--json", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    indexed = [
        layer
        for idx in json.loads(proc.stdout)["indexes"]
        for layer in idx["layers"]
        if layer["status"] == "built"
    ]
    assert len(indexed) == 2, "the large layer and the app layer get zTOCs, the shell layer does not"
    return Lazy(
        Reference(world.ref.registry, world.ref.repository, tag="v1-soci"), containerd2_bin, snapshotter
    )


def _fetched_read_spans_only(variant: dict[str, Any], world: World) -> None:
    """Lazily, the shell layer is downloaded whole (it has no zTOC: the snapshotter fetches and unpacks it
    itself), the SOCI index and zTOCs, and of the indexed layers only what was read: far less than the 24 MiB
    layer nobody reads."""
    shell = world.image.layers[0].size
    assert shell < variant["bytes_fetched"] < shell + 12 * MIB, variant["bytes_fetched"]


def test_lazy_start_through_containerd2_records_the_files_read(
    world: World, lazy: Lazy, work: Path, tmp_path: Path
) -> None:
    record = tmp_path / "prefetch.json"
    report = _report(world.cli(str(lazy.ref), *lazy.args(), "--record", str(record), "--json", work=work))
    (variant,) = report["variants"]
    assert variant["name"] == "lazy" and variant["snapshotter"] == "soci"
    assert variant["via"].startswith("containerd 2.") and "proxy snapshotter 'soci'" in variant["via"]
    assert [layer["how"] for layer in variant["layers"]] == ["remote", "lazy", "lazy"]
    assert variant["fuse_mounts"] == 2 and variant["lazy_layers"] == 2
    _fetched_read_spans_only(variant, world)
    assert json.loads(record.read_text()) == RECORDED, "read through FUSE, recorded on the overlay above it"
    assert report["warnings"] == []


def test_lazy_start_with_containerd16_goes_to_the_snapshotters_own_api(
    world: World, lazy: Lazy, work: Path
) -> None:
    report = _report(world.cli(str(lazy.ref), *lazy.args(containerd="containerd"), "--json", work=work))
    (variant,) = report["variants"]
    assert "the snapshotter's own Snapshots API" in variant["via"]
    assert variant["fuse_mounts"] == 2 and [x["how"] for x in variant["layers"]] == ["remote", "lazy", "lazy"]
    _fetched_read_spans_only(variant, world)


def test_baseline_compares_the_lazy_start_with_a_full_pull(world: World, lazy: Lazy, work: Path) -> None:
    proc = world.cli(str(lazy.ref), *lazy.args(), "--baseline", "--ready-log", "^done$", work=work)
    assert proc.returncode == 0, proc.stderr
    assert "lazy (soci)" in proc.stdout and "full (overlayfs)" in proc.stdout
    assert "sooner than from a full pull" in proc.stdout or "LATER than from a full pull" in proc.stdout
    report = _report(world.cli(str(lazy.ref), *lazy.args(), "--baseline", "--json", work=work))
    lazy_run, full = report["variants"]
    assert (lazy_run["name"], full["name"]) == ("lazy", "full")
    assert full["fuse_mounts"] == 0 and [x["how"] for x in full["layers"]] == ["unpacked"] * 3
    assert full["bytes_fetched"] > sum(layer.size for layer in world.image.layers)
    assert lazy_run["bytes_fetched"] < full["bytes_fetched"] - 20 * MIB
    assert isinstance(report["lazy_loses"], bool) and report["verdict"]
    assert ("LATER" in report["verdict"]) == report["lazy_loses"]


def test_an_image_without_a_v2_index_is_not_lazy_and_the_user_hears_why(
    world: World, lazy: Lazy, work: Path
) -> None:
    """The plain tag has no V2 index: the stock snapshotter hands every layer back to be unpacked, and says
    nothing."""
    proc = world.cli(str(world.ref), *lazy.args(), "--json", work=work)
    report = _report(proc)
    (variant,) = report["variants"]
    assert variant["fuse_mounts"] == 0 and [x["how"] for x in variant["layers"]] == ["unpacked"] * 3
    (warning,) = report["warnings"]
    assert "did not load this image lazily" in warning and "[pull_modes.soci_v1] enable = true" in warning
    assert "warning: the SOCI snapshotter (with its default config) did not load" in proc.stderr


def test_sigterm_during_a_lazy_start_unmounts_everything(world: World, lazy: Lazy, work: Path) -> None:
    argv = [sys.executable, "-m", "wrapper.cli.main", "startup", str(lazy.ref), *lazy.args(), "--work-dir",
            str(work), "--ready-log", "never", "--", "/bin/sh", "-c", "cat /app/read-1.txt; sleep 120"]  # fmt: skip

    def fuse_mounted(everything: dict[int, int]) -> None:
        fuse = [line for pid in everything for line in _mountinfo(pid) if "fuse.rawBridge" in line]
        assert fuse, "no FUSE mount while the container runs"

    _terminate_mid_run(argv, fuse_mounted)


def _mountinfo(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []


def test_sigkill_of_the_tool_during_a_lazy_start_leaves_nothing(world: World, lazy: Lazy, work: Path) -> None:
    """A CI timeout or the OOM killer: the supervisor's watchdog kills the namespaces' init (and the kernel
    everything inside: containerd, the shim, the container, the snapshotter, its FUSE mounts) and removes the
    run directory."""
    argv = [sys.executable, "-m", "wrapper.cli.main", "startup", str(lazy.ref), *lazy.args(), "--work-dir",
            str(work), "--ready-log", "never", "--", "/bin/sh", "-c", "cat /app/read-1.txt; sleep 120"]  # fmt: skip
    cli = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        everything = _wait_for_the_container(cli)
    finally:
        cli.kill()
        cli.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (still_running(everything) or list(work.iterdir())):
        time.sleep(0.1)
    assert still_running(everything) == {}, "processes of the run outlived it"


def test_lazy_start_from_a_tls_registry_with_a_password(
    lazy: Lazy, work: Path, tmp_path_factory: pytest.TempPathFactory, soci_bin: str
) -> None:
    """As from ECR: HTTPS and credentials. The tool's requests and the snapshotter's both go through the
    counting proxy (plain HTTP on loopback), which speaks HTTPS to the registry; the password reaches the
    snapshotter in a private docker config, for the registry's name and the proxy's."""
    base = tmp_path_factory.mktemp("secure")
    registry = start_tls_registry(base / "registry")
    try:
        assert (
            registry.ca_file is not None and registry.username is not None and registry.password is not None
        )
        access = ["--ca-file", registry.ca_file, "--username", registry.username, "--password-stdin"]
        client = RegistryClient(
            CredentialStore(explicit={registry.host: Credentials(registry.username, registry.password)}),
            ca_file=registry.ca_file,
        )
        ref = Reference(registry.host, "startup/secure", tag="v1")
        push_image(
            client, ref, build_image(base / "layers", _runnable_layers(), run_config={"Cmd": DEFAULT_COMMAND})
        )
        proc = run_cli(
            "index", str(ref), "--soci-version", "V2", "--output-tag", "v1-soci", "--soci-bin", soci_bin,
            "--work-dir", str(base / "index"), "--quiet", *access, stdin=registry.password + "\n",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        proc = run_cli(
            "startup", "--work-dir", str(work), f"{registry.host}/startup/secure:v1-soci", *lazy.args(), "--json",
            *access, stdin=registry.password + "\n",
        )  # fmt: skip
        (variant,) = _report(proc)["variants"]
        assert variant["fuse_mounts"] == 2 and [x["how"] for x in variant["layers"]] == [
            "remote",
            "lazy",
            "lazy",
        ]
        assert registry.password not in proc.stdout + proc.stderr
    finally:
        registry.stop()

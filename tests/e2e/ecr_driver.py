"""Runs the seed command against a fake ECR inside private mount and network namespaces.

Started by tests/e2e/test_ecr_namespace.py as root, as
``unshare -mn --propagation private <python> -m tests.e2e.ecr_driver --scenario S --dir D ...``
(from the repository root). Inside the namespaces it:

1. refuses to go on unless its network and mount namespaces differ from the ones named by
   ``--outer-netns``/``--outer-mntns`` (so the hosts bind mount and port 443 can never touch the host);
2. brings ``lo`` up and bind-mounts a private hosts file over /etc/hosts, where
   ``123456789012.dkr.ecr.eu-west-1.amazonaws.com`` is 127.0.0.1;
3. starts moto's server on a free loopback port and Debian's docker-registry with TLS and htpasswd on
   127.0.0.1:443 (its certificate names the ECR host; its users include ``AWS`` with the password moto's
   token decodes to);
4. pushes a two-layer test image to the ECR host with the project's RegistryClient (as ``testuser``, so
   only moto's token can explain the CLI getting in as ``AWS``), and for ``already-indexed``/``no-ca`` a
   well-formed SOCI index v1 plus its referrers tag ``sha256-<hex>``;
5. runs the CLI with the seed's flags while a watcher thread reads /proc/*/cmdline every few milliseconds
   looking for the registry password (or the base64 of ``AWS:<password>``) in any process's argv, and
   noting every process the CLI started under its --work-dir (containerd, soci); a canary process started
   first proves the watcher sees short-lived argvs;
6. inspects the registry (referrers, the referrers tag), looks for leftover containerd processes and work
   directories, stops everything, and prints one JSON object on stdout.

Its own progress goes to stderr. Everything it starts is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.registry import (
    ECR_ACCOUNT,
    ECR_HOST,
    ECR_REGION,
    MOTO_ECR_PASSWORD,
    MOTO_ECR_USERNAME,
    TEST_PASSWORD,
    TEST_USERNAME,
    MotoServer,
    RegistryServer,
    aws_test_environment,
    start_moto,
    start_tls_registry,
)
from tests.imagefactory import Image, LayerSpec, build_image, push_image
from wrapper.core.models import (
    OCI_INDEX,
    OCI_MANIFEST,
    SOCI_INDEX_V1,
    SOCI_LAYER_DIGEST_ANNOTATION,
    SOCI_LAYER_MEDIATYPE_ANNOTATION,
    SOCI_ZTOC,
    Descriptor,
)
from wrapper.core.reference import Reference
from wrapper.registry.auth import Credentials, CredentialStore
from wrapper.registry.client import RegistryClient

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("already-indexed", "no-ca", "end-to-end")
REPO = "team/app"
MIB = 1 << 20
MIN_LAYER_SIZE = "1MiB"
BIG_LAYER_BYTES = 3 * MIB // 2  # random bytes: gzip keeps it above 1 MiB
SMALL_LAYER_BYTES = 64 << 10
CLI_TIMEOUT = 150.0
# What must never appear in a process's argv: the registry password, and the docker-config form of it.
SECRETS = (
    MOTO_ECR_PASSWORD,
    base64.b64encode(f"{MOTO_ECR_USERNAME}:{MOTO_ECR_PASSWORD}".encode()).decode(),
)
# Seen by the watcher in a helper process it starts itself: proves the watcher actually sees argv.
CANARY = "ecr-driver-watcher-canary-" + os.urandom(6).hex()


def log(message: str) -> None:
    print(f"ecr_driver: {message}", file=sys.stderr, flush=True)


# -- argv watcher -----------------------------------------------------------------------------------------
@dataclass
class ArgvWatcher:
    """Reads every process's /proc/PID/cmdline in a loop and records the ones containing a needle.

    It also records every process whose argv mentions ``watch_path`` (the CLI's --work-dir: containerd's
    --config and soci's --root lie under it), which shows what the CLI started and that the watcher saw it.
    """

    needles: Sequence[str]
    canary: str
    watch_path: str
    interval: float = 0.002
    scans: int = 0
    leaks: list[dict[str, Any]] = field(default_factory=list)
    # (pid, argv) pairs: a forked child shows its parent's argv until it execs, so a pid can have two.
    started: list[tuple[int, list[str]]] = field(default_factory=list)
    canary_seen: bool = False
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started_keys: set[tuple[int, bytes]] = field(default_factory=set)
    _leak_keys: set[tuple[int, bytes]] = field(default_factory=set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="argv-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        needles = [n.encode() for n in self.needles]
        canary = self.canary.encode()
        watch = self.watch_path.encode()
        me = os.getpid()
        while not self._stop.is_set():
            try:
                self.scan(needles, canary, watch, me)
            except Exception as exc:  # keep watching; report what went wrong
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def scan(self, needles: Sequence[bytes], canary: bytes, watch: bytes, me: int) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    raw = fh.read()
            except OSError:
                continue  # gone already
            if canary in raw:
                self.canary_seen = True
            pid = int(entry.name)
            if watch in raw and (pid, raw) not in self._started_keys:
                self._started_keys.add((pid, raw))
                self.started.append((pid, _split(raw)))
            for needle in needles:
                if needle in raw and (pid, raw) not in self._leak_keys:
                    self._leak_keys.add((pid, raw))
                    self.leaks.append({"pid": pid, "argv": _split(raw)})
        self.scans += 1


# -- processes ------------------------------------------------------------------------------------------
def _split(raw: bytes) -> list[str]:
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _cmdlines() -> Iterator[tuple[int, list[str]]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        if raw:
            yield int(entry.name), _split(raw)


def processes_mentioning(text: str, *, exclude: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Processes (other than ``exclude``) with ``text`` somewhere in their argv."""
    return [
        {"pid": pid, "argv": argv}
        for pid, argv in _cmdlines()
        if pid not in exclude and any(text in a for a in argv)
    ]


def containerd_processes_under(path: Path) -> list[dict[str, Any]]:
    """containerd daemons whose argv (``--config <run dir>/...``) lies under ``path``: ours."""
    return [p for p in processes_mentioning(str(path)) if "containerd" in Path(p["argv"][0]).name]


def run_checked(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


def namespace_id(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


# -- SOCI artifacts --------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def referrers_tag(subject_digest: str) -> str:
    return "sha256-" + subject_digest.split(":", 1)[1]


def push_fake_soci_v1(client: RegistryClient, ref: Reference, image: Image, big_layer_digest: str) -> str:
    """A well-formed SOCI index v1 for ``image`` (one placeholder zTOC, for the big layer) and the referrers
    tag listing it; returns the index manifest's digest."""
    config_data = b"{}"
    config = Descriptor(SOCI_INDEX_V1, _digest(config_data), len(config_data))
    client.push_blob(ref, config, lambda: [config_data])
    big = next(layer for layer in image.layers if layer.digest == big_layer_digest)
    ztoc_data = b"placeholder ztoc for " + big.digest.encode()
    ztoc = Descriptor(SOCI_ZTOC, _digest(ztoc_data), len(ztoc_data))
    client.push_blob(ref, ztoc, lambda: [ztoc_data])
    subject = image.manifest.descriptor
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SOCI_INDEX_V1,
        "config": config.to_oci(),
        "layers": [
            {
                **ztoc.to_oci(),
                "annotations": {
                    SOCI_LAYER_DIGEST_ANNOTATION: big.digest,
                    SOCI_LAYER_MEDIATYPE_ANNOTATION: big.descriptor.media_type,
                },
            }
        ],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    }
    body = _canonical(doc)
    digest = client.put_manifest(ref, _digest(body), body, OCI_MANIFEST)
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body), "artifactType": SOCI_INDEX_V1}
    index = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    client.put_manifest(ref, referrers_tag(image.digest), index, OCI_INDEX)
    return digest


def inspect_registry(client: RegistryClient, ref: Reference, image_digest: str) -> dict[str, Any]:
    """The SOCI v1 referrers of the image (and every manifest they name), and the raw referrers tag."""
    out: dict[str, Any] = {"referrers": [], "referrers_tag": None}
    for desc in client.get_referrers(ref, image_digest, artifact_type=SOCI_INDEX_V1):
        manifest = client.get_manifest(ref, desc.digest)
        out["referrers"].append(
            {"digest": desc.digest, "artifact_type": desc.artifact_type, "manifest": manifest.json()}
        )
    with contextlib.suppress(Exception):
        out["referrers_tag"] = client.get_manifest(ref, referrers_tag(image_digest)).json()
    return out


# -- server logs ----------------------------------------------------------------------------------------
def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def registry_auth_summary(log_text: str) -> dict[str, int]:
    """Authenticated and refused requests in a slice of distribution's log (it does not log user names).

    A refusal is either the challenge to a request sent without credentials (what every client does first)
    or wrong credentials: both are "error authorizing context" lines.
    """
    return {
        "authorized": log_text.count('msg="authorized request"'),
        "refused": log_text.count('msg="error authorizing context'),
    }


def moto_requests(log_text: str) -> int:
    """API calls moto answered (werkzeug's access log: ``"POST / HTTP/1.1" 200``)."""
    return len(re.findall(r'"POST / HTTP/1\.[01]" 200', log_text))


# -- the scenario ---------------------------------------------------------------------------------------
def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    drop = ("AWS_", "DOCKER_", "SOCI_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(drop) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env.update(extra)
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "soci-wrapper"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from wrapper.cli.main import main; sys.exit(main())"]


def stop_cli(proc: subprocess.Popen[str], work_parent: Path) -> None:
    """Last resort when the driver is unwinding: the CLI's process group, then any containerd of this run
    (it runs in a session of its own, so it is found by its --config under ``work_parent``), by pid."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)
    for leftover in containerd_processes_under(work_parent):
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover["pid"], signal.SIGKILL)


class Terminated(Exception):
    """SIGTERM from the test (its timeout): unwind so everything started here is stopped."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated("terminated by SIGTERM")


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    base: Path = args.dir
    base.mkdir(parents=True, exist_ok=True)

    # 1. Never touch the host's network or mounts.
    result["namespaces"] = {"net": namespace_id("net"), "mnt": namespace_id("mnt")}
    if namespace_id("net") == args.outer_netns or namespace_id("mnt") == args.outer_mntns:
        raise RuntimeError(
            "not inside private mount and network namespaces; run me through "
            "'unshare -mn --propagation private'"
        )

    # 2. Loopback and a private /etc/hosts.
    run_checked(["ip", "link", "set", "lo", "up"])
    hosts = base / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.1 {ECR_HOST}\n")
    run_checked(["mount", "--bind", str(hosts), "/etc/hosts"])
    result["ecr_host_resolves_to"] = socket.gethostbyname(ECR_HOST)

    stack = contextlib.ExitStack()
    with stack:
        # 3. moto and the registry.
        moto: MotoServer = start_moto(base / "moto")
        stack.callback(moto.stop)
        log(f"moto on {moto.endpoint}")
        registry: RegistryServer = start_tls_registry(base / "registry", listen="127.0.0.1:443")
        stack.callback(registry.stop)
        assert registry.ca_file is not None
        log(f"registry on {registry.url} (pid {registry.process.pid})")

        # 4. The image (and, for the already-indexed scenarios, a SOCI index v1 and its referrers tag).
        ref = Reference.ecr(ECR_ACCOUNT, ECR_REGION, REPO)
        image = build_image(
            base / "layers",
            [LayerSpec(BIG_LAYER_BYTES, seed=11), LayerSpec(SMALL_LAYER_BYTES, seed=12)],
        )
        big, small = image.layers
        setup_store = CredentialStore(
            explicit={ECR_HOST: Credentials(TEST_USERNAME, TEST_PASSWORD)}, use_ecr=False
        )
        with RegistryClient(setup_store, ca_file=registry.ca_file, max_attempts=2) as client:
            pushed = push_image(client, ref, image, tag="v1")
            assert pushed == image.digest
            result["image"] = {
                "digest": image.digest,
                "media_type": image.media_type,
                "size": image.manifest.size,
                "layers": [{"digest": x.digest, "size": x.size} for x in image.layers],
                "big_layer": big.digest,
                "small_layer": small.digest,
            }
            if args.scenario in ("already-indexed", "no-ca"):
                result["preexisting_index"] = push_fake_soci_v1(client, ref, image, big.digest)
        log(f"pushed {ref.registry}/{REPO}@{image.digest}")

        # 5. The CLI, watched.
        work_parent = base / "work"
        work_parent.mkdir()
        config_dir = base / "docker-config"  # empty: no credentials but moto's token
        config_dir.mkdir()
        env = _clean_env(aws_test_environment(moto.endpoint, base / "aws"))
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_ECR_PUBLIC"):
            env.pop(name, None)  # only ECR is pointed at moto, as the brief's environment has it
        env["DOCKER_CONFIG"] = str(config_dir)
        env["TMPDIR"] = str(base / "tmp")
        (base / "tmp").mkdir()
        if args.soci_bin:
            env["SOCI_BIN"] = args.soci_bin
        argv = [
            *cli_command(),
            "--repo",
            REPO,
            "--digest",
            image.digest,
            "--region",
            ECR_REGION,
            "--account",
            ECR_ACCOUNT,
            "--json",
            "--min-layer-size",
            MIN_LAYER_SIZE,
            "--work-dir",
            str(work_parent),
        ]
        if args.scenario != "no-ca":
            argv += ["--ca-file", registry.ca_file]
        if args.soci_bin:  # soci (and containerd) are checked before any network work, in every scenario
            argv += ["--soci-bin", args.soci_bin]
        result["cli_argv"] = argv
        registry_offset = registry.log_path.stat().st_size
        moto_offset = moto.log_path.stat().st_size

        watcher = ArgvWatcher(SECRETS, CANARY, str(work_parent))
        watcher.start()
        stack.callback(watcher.stop)
        # The watcher must see a short-lived process's argv, or its silence proves nothing.
        subprocess.run(
            [sys.executable, "-c", "import time; time.sleep(0.2)", CANARY], check=False, timeout=30
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=base,
            start_new_session=True,
        )
        stack.callback(stop_cli, proc, work_parent)
        try:
            stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
            result["timed_out"] = False
        except subprocess.TimeoutExpired:
            log(f"the CLI did not finish within {CLI_TIMEOUT:.0f} s; stopping it")
            proc.send_signal(signal.SIGTERM)  # it unwinds on SIGTERM: stops its containerd, removes files
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate(timeout=30)
            result["timed_out"] = True
        result["cli_seconds"] = round(time.monotonic() - started, 2)
        time.sleep(0.05)  # one more scan after the CLI's last child is gone
        watcher.stop()

        result["exit_code"] = proc.returncode
        result["stdout"] = stdout
        result["stderr_tail"] = "\n".join(stderr.strip().splitlines()[-25:])
        result["stderr_has_traceback"] = "Traceback (most recent call last)" in stderr
        try:
            result["stdout_json"] = json.loads(stdout)
        except ValueError:
            result["stdout_json"] = None
        result["argv_leaks"] = watcher.leaks
        result["watcher"] = {
            "scans": watcher.scans,
            "canary_seen": watcher.canary_seen,
            "errors": watcher.errors,
        }
        # What the CLI started under its work dir: containerd (--config), soci (--root). The CLI's own argv
        # (its --work-dir names the same directory; its children show it too until they exec) is left out.
        cli_argvs = [a for pid, a in watcher.started if pid == proc.pid]
        result["started_under_work_dir"] = [
            {"pid": pid, "program": Path(a[0]).name, "argv": a}
            for pid, a in watcher.started
            if a not in cli_argvs
        ]
        result["leftover_containerd"] = containerd_processes_under(work_parent)
        result["leftover_processes"] = processes_mentioning(str(work_parent), exclude=(os.getpid(),))
        result["work_dir_entries"] = sorted(str(p.relative_to(work_parent)) for p in work_parent.rglob("*"))
        result["tmp_dir_entries"] = sorted(
            str(p.relative_to(base / "tmp")) for p in (base / "tmp").rglob("*")
        )
        result["registry_auth_during_cli"] = registry_auth_summary(
            read_from(registry.log_path, registry_offset)
        )
        result["moto_calls_during_cli"] = moto_requests(read_from(moto.log_path, moto_offset))

        # 6. What the registry holds now.
        with RegistryClient(setup_store, ca_file=registry.ca_file, max_attempts=2) as client:
            result["registry"] = inspect_registry(client, ref, image.digest)
        result["registry_log_tail"] = registry.log_tail(15)
    # Everything the driver started is stopped: nothing of this run may still be running.
    result["leftover_after_stop"] = processes_mentioning(str(base), exclude=(os.getpid(), os.getppid()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.ecr_driver")
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="scratch directory for this run")
    parser.add_argument("--outer-netns", required=True, help="readlink /proc/self/ns/net outside")
    parser.add_argument("--outer-mntns", required=True, help="readlink /proc/self/ns/mnt outside")
    parser.add_argument("--soci-bin", help="the real soci binary (end-to-end)")
    args = parser.parse_args(argv)
    for tool in ("ip", "mount"):
        if shutil.which(tool) is None:
            print(json.dumps({"driver_error": f"{tool} is not installed"}))
            return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    result: dict[str, Any] = {"scenario": args.scenario}
    code = 0
    try:
        run(args, result)
    except BaseException as exc:  # pytest.fail() from the fixtures raises a BaseException
        result["driver_error"] = f"{type(exc).__name__}: {exc}"
        result["driver_traceback"] = traceback.format_exc()
        code = 1
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

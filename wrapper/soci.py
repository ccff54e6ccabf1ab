"""The one place that runs the soci binary, and maps its failures to typed errors.

Every call gets ``--address``, ``--namespace``, ``--root`` (a directory of this run) and
``--content-store containerd``, so nothing touches the host's soci or containerd state. Registry
credentials reach ``soci push`` through a temporary ``DOCKER_CONFIG`` directory (0700, its config.json 0600,
deleted right after the call), never through ``--user`` on its command line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.errors import (
    AuthError,
    ContainerdError,
    MissingDependencyError,
    NotFoundError,
    NothingToIndexError,
    RegistryError,
    SociError,
)
from wrapper.models import Platform

log = logging.getLogger("wrapper.soci")

SOCI_RELEASE = "v0.15.0"  # the release scripts/bootstrap.sh builds; doctor warns about others
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_TIMEOUT = 3600.0
_STDERR_TAIL_LINES = 12
_DIGEST_LINE = re.compile(r"^sha256:[a-f0-9]{64}$")


def find_soci(explicit: str | None = None, *, project_root: Path | None = None) -> str | None:
    """Locate soci: ``--soci-bin``, then ``$SOCI_BIN``, then ``.deps/bin/soci`` of the checkout, then PATH."""
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("SOCI_BIN"):
        candidates.append(os.environ["SOCI_BIN"])
    root = project_root or Path(__file__).resolve().parent.parent
    candidates.append(str(root / ".deps" / "bin" / "soci"))
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
        if explicit and candidate == explicit:
            return None  # an explicit choice that is not usable is not silently replaced
    return shutil.which("soci")


def soci_version(binary: str) -> str:
    """``soci --version`` as ``v0.15.0 <revision>``-like text; raises MissingDependencyError."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise MissingDependencyError(f"soci at {binary} does not run: {exc}") from exc
    # "soci version v0.15.0 7716bd67..." -> "v0.15.0 7716bd67..."
    return out.split("version", 1)[-1].strip() if "version" in out else out


@dataclass(frozen=True)
class PushAuth:
    """What ``soci push`` needs to reach a registry. The password never reaches soci's argv."""

    host: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    plain_http: bool = False
    ca_file: str | None = None


@dataclass
class Soci:
    """Runs soci against one containerd (address + namespace) with a private root directory."""

    binary: str
    address: str
    namespace: str
    root: Path
    timeout: float = DEFAULT_TIMEOUT
    debug: bool = False
    # soci copies each layer to a temporary file before building its zTOC: keep those inside the work dir.
    tmp_dir: Path | None = None

    # -- commands ------------------------------------------------------------------------------------
    def create(
        self,
        ref: str,
        *,
        platforms: Sequence[Platform] = (),
        all_platforms: bool = False,
        span_size: int | None = None,
        min_layer_size: int | None = None,
        force: bool = False,
    ) -> None:
        """``soci create``: a SOCI index manifest v1 (a zTOC per large layer) for image record ``ref``."""
        args = ["create", *_platform_args(platforms, all_platforms), *_size_args(span_size, min_layer_size)]
        if force:
            args.append("--force")
        self._run([*args, ref], what="soci create", min_layer_size=min_layer_size)

    def index_digests(self, ref: str, platform: Platform) -> list[str]:
        """Digests of the SOCI indexes soci recorded for ``ref``'s manifest of ``platform``, newest first."""
        out = self._run(
            ["index", "list", "--ref", ref, "--platform", str(platform), "--quiet"], what="soci index list"
        )
        return [line.strip() for line in out.splitlines() if _DIGEST_LINE.match(line.strip())]

    def push(self, ref: str, auth: PushAuth, *, platforms: Sequence[Platform] = ()) -> list[str]:
        """``soci push`` of the newest v1 index of each platform of ``ref``; returns soci's output lines."""
        args = ["push", "--existing-index", "allow", *_platform_args(platforms, False)]
        if auth.plain_http:
            args.append("--plain-http")
        with _push_environment(auth, self.tmp_dir) as env:
            out = self._run([*args, ref], what="soci push", env=env)
        return [line for line in out.splitlines() if line.strip()]

    def convert(
        self,
        src: str,
        dst: str,
        *,
        platforms: Sequence[Platform] = (),
        all_platforms: bool = False,
        span_size: int | None = None,
        min_layer_size: int | None = None,
    ) -> None:
        """``soci convert``: a SOCI-enabled image (index manifest v2) as new image record ``dst``."""
        args = ["convert", *_platform_args(platforms, all_platforms), *_size_args(span_size, min_layer_size)]
        self._run([*args, src, dst], what="soci convert", min_layer_size=min_layer_size)

    def version(self) -> str:
        return soci_version(self.binary)

    # -- the choke point -----------------------------------------------------------------------------
    def argv(self, args: Sequence[str]) -> list[str]:
        """The full command line for soci ``args`` (global flags first)."""
        base = [
            self.binary,
            "--address",
            self.address,
            "--namespace",
            self.namespace,
            "--root",
            str(self.root),
            "--content-store",
            "containerd",
        ]
        if self.debug:
            base.append("--debug")
        return [*base, *args]

    def _run(
        self,
        args: Sequence[str],
        *,
        what: str,
        env: Mapping[str, str] | None = None,
        min_layer_size: int | None = None,
    ) -> str:
        argv = self.argv(args)
        self.root.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ)
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            child_env["TMPDIR"] = str(self.tmp_dir)
        child_env.update(env or {})
        log.debug("running %s", " ".join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env,
                start_new_session=True,  # so a timeout can stop soci and anything it started
            )
        except FileNotFoundError as exc:
            raise MissingDependencyError(
                f"soci not found at {self.binary}", hint="run scripts/bootstrap.sh or pass --soci-bin"
            ) from exc
        except PermissionError as exc:
            raise MissingDependencyError(f"soci at {self.binary} is not executable") from exc
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise SociError(f"{what} did not finish within {self.timeout:.0f} s and was stopped") from exc
        except BaseException:
            _kill_group(proc)
            raise
        if proc.returncode != 0:
            raise classify_failure(what, proc.returncode, stderr, min_layer_size=min_layer_size)
        if stderr.strip():
            log.debug("%s stderr: %s", what, stderr.strip())
        return stdout


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=10)


def _platform_args(platforms: Sequence[Platform], all_platforms: bool) -> list[str]:
    if all_platforms:
        return ["--all-platforms"]
    out: list[str] = []
    for p in platforms:
        out += ["--platform", str(p)]
    return out


def _size_args(span_size: int | None, min_layer_size: int | None) -> list[str]:
    out: list[str] = []
    if span_size is not None:
        out += ["--span-size", str(span_size)]
    if min_layer_size is not None:
        out += ["--min-layer-size", str(min_layer_size)]
    return out


def stderr_tail(stderr: str, lines: int = _STDERR_TAIL_LINES) -> str:
    return "\n".join(stderr.strip().splitlines()[-lines:])


def classify_failure(what: str, code: int, stderr: str, *, min_layer_size: int | None = None) -> SociError:
    """Turn a failed soci call into a typed error with plain words for the failures we know."""
    tail = stderr_tail(stderr)
    last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), f"exit status {code}")
    last = last.removeprefix("soci: ").strip()
    low = stderr.lower()
    err: SociError
    if "no ztocs created" in low:
        size = f"{min_layer_size} bytes" if min_layer_size is not None else "10 MiB (soci's default)"
        err = NothingToIndexError(
            f"nothing to index: every layer of the image is smaller than the minimum layer size of {size}",
            hint="lower --min-layer-size to index smaller layers",
        )
    elif "dial unix" in low:  # containerd's socket (our registries are reached over TCP)
        err = _as_soci(ContainerdError(f"{what}: cannot reach containerd: {last}"))
    elif "permission denied" in low:  # a file or socket, not the registry: keep soci's own words
        err = SociError(f"{what} failed (exit {code}): {last}")
    elif any(s in low for s in ("401 unauthorized", "403 forbidden", "unauthorized", "denied:")):
        err = _as_soci(AuthError(f"{what}: the registry refused the credentials: {last}"))
    elif any(s in low for s in ("connection refused", "no such host", "i/o timeout", "tls:", "x509:")):
        err = _as_soci(RegistryError(f"{what}: cannot reach the registry: {last}"))
    elif "not found" in low and "image" in low:
        err = _as_soci(NotFoundError(f"{what}: {last}"))
    else:
        err = SociError(f"{what} failed (exit {code}): {last}")
    err.detail = tail
    return err


def _as_soci(error: Exception) -> SociError:
    """Keep the more specific exit code of ``error`` while staying a SociError for callers."""
    out = SociError(str(error))
    out.exit_code = getattr(error, "exit_code", out.exit_code)
    return out


@contextlib.contextmanager
def _push_environment(auth: PushAuth, tmp_parent: Path | None) -> Iterator[dict[str, str]]:
    """A private DOCKER_CONFIG (and SSL_CERT_FILE for a custom CA) for one soci push, removed afterwards."""
    env: dict[str, str] = {}
    if tmp_parent is not None:
        tmp_parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="soci-auth-", dir=tmp_parent))
    try:
        os.chmod(tmp, 0o700)
        config: dict[str, object] = {"auths": {}}
        if auth.username is not None:
            token = base64.b64encode(f"{auth.username}:{auth.password or ''}".encode()).decode()
            keys = [auth.host]
            if auth.host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
                keys.append("https://index.docker.io/v1/")
            config["auths"] = {key: {"auth": token} for key in keys}
        path = tmp / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        env["DOCKER_CONFIG"] = str(tmp)
        if auth.ca_file:
            bundle = tmp / "ca-bundle.pem"
            with open(bundle, "wb") as out:
                if SYSTEM_CA_BUNDLE.exists():
                    out.write(SYSTEM_CA_BUNDLE.read_bytes().rstrip(b"\n") + b"\n")
                out.write(Path(auth.ca_file).read_bytes())
            env["SSL_CERT_FILE"] = str(bundle)
        yield env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

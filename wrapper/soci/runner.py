"""The one place that runs the soci binary, and maps its failures to typed errors.

Every call gets ``--address``, ``--namespace``, ``--root`` (a directory of this run) and ``--content-store``,
so nothing touches the host's soci or containerd state. SOCI index manifest v1 uses soci's own content store
(``<root>/content``): with containerd's, containerd's garbage collector deletes every platform's index but the
last (soci v0.15.0 keeps them alive through one image label that each platform overwrites). soci still reads
the image and its layers from containerd.

What soci prints as it works (a zTOC built, reused or skipped; an artifact pushed or skipped) is read line by
line while it runs and handed to the caller as events, for progress and for the report. ``soci push`` is
retried when it fails for a transient reason (it is idempotent: blobs already in the registry are skipped).

Registry credentials reach ``soci push`` through a temporary ``DOCKER_CONFIG`` directory (0700, its
config.json 0600, deleted right after the call), never through ``--user`` on its command line.
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
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from wrapper.core.errors import (
    AuthError,
    ContainerdError,
    MissingDependencyError,
    NotFoundError,
    NothingToIndexError,
    RegistryError,
    SociError,
)
from wrapper.core.models import Platform
from wrapper.core.pins import SOCI_VERSION
from wrapper.core.report import EventSink, SociEvent
from wrapper.core.util import one_line

log = logging.getLogger("wrapper.soci.runner")

SOCI_RELEASE = SOCI_VERSION  # the release scripts/bootstrap.sh builds (wrapper/pins.env)
# The releases whose flags and output soci-wrapper knows: major.minor of the pin.
SUPPORTED_SERIES = ".".join(SOCI_RELEASE.split(".")[:2])
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_TIMEOUT = 3600.0
_STDERR_TAIL_LINES = 12
_DIGEST_LINE = re.compile(r"^sha256:[a-f0-9]{64}$")
_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)\S*")

# What soci v0.15.0 prints on stdout as it goes (soci/soci_index.go, cmd/soci/commands/push.go).
_ZTOC_BUILT = re.compile(r"^layer (sha256:[a-f0-9]{64}) -> ztoc (sha256:[a-f0-9]{64})( \(already exists\))?$")
_ZTOC_SKIPPED = re.compile(r"^ztoc skipped - layer (sha256:[a-f0-9]{64}) \(([^)]*)\) (.*)$")
# soci create/convert with a prefetch list: an artifact per layer holding listed files (stdout), and a warning
# for each listed file in no indexed layer (stderr, logrus: `... level=warning msg="prefetch file P not found in
# any layer"`; the path as soci matches it: cleaned, without its leading slash).
_PREFETCH_MADE = re.compile(
    r"^Created prefetch artifact for layer (sha256:[a-f0-9]{64}): (sha256:[a-f0-9]{64})$"
)
_PREFETCH_MISSING = re.compile(r'level=warning msg="prefetch file ((?:[^"\\]|\\.)*) not found in any layer"')
_PUSH_LINE = re.compile(
    r"^(pushing soci index|pushing artifact|successfully pushed artifact|skipped artifact) with digest: "
    r"(sha256:[a-f0-9]{64})$"
)

# Failures of soci push worth another attempt (oras-go already retries what it can replay; an upload with a
# body, a reset or a timeout fails the command) and failures that another attempt cannot fix.
_TRANSIENT = re.compile(
    r"status code (5\d\d|429)|\b(5\d\d|429) (internal server error|bad gateway|service unavailable|"
    r"gateway timeout|too many requests)|connection reset|connection refused|broken pipe|unexpected eof|"
    r"\beof\b|i/o timeout|timeout awaiting|tls handshake timeout|client\.timeout|server closed idle connection|"
    r"connection was forcibly closed|no route to host",
    re.IGNORECASE,
)
_PERMANENT = re.compile(
    r"status code (400|401|403|404|405|413)|unauthorized|forbidden|denied|name unknown|manifest invalid|"
    r"manifest unknown|blob unknown|unsupported|x509:|certificate",
    re.IGNORECASE,
)


class SignalGate:
    """Holds back the CLI's signal exceptions (Ctrl-C, SIGTERM) in the main thread for a short section, such as
    starting soci: raised there, the exception would leave a soci nobody stops. The CLI's handlers call
    ``deliver``; ``release`` raises what came in between."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending: BaseException | None = None

    def deliver(self, exc: BaseException) -> None:
        if self._depth:
            self._pending = self._pending or exc
            return
        raise exc

    def hold(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # signals reach the main thread only
        self._depth += 1
        return True

    def release(self, held: bool) -> None:
        if not held:
            return
        self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            exc, self._pending = self._pending, None
            raise exc


_SIGNALS = SignalGate()


def deliver_signal(exc: BaseException) -> None:
    """For the CLI's signal handlers: raise ``exc`` now, or as soon as soci has started."""
    _SIGNALS.deliver(exc)


_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()


def kill_running_soci() -> None:
    """Stop every soci this process is running (and what each started): on an interrupt of a run that has
    several images in flight, whose soci calls run in worker threads."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def parse_event(line: str) -> SociEvent | None:
    """The event for one line of soci's stdout, or None for a line that is not one."""
    line = line.strip()
    if m := _ZTOC_BUILT.match(line):
        return SociEvent("reused" if m.group(3) else "built", m.group(1), m.group(2))
    if m := _ZTOC_SKIPPED.match(line):
        return SociEvent("skipped", m.group(1), detail=m.group(3))
    if m := _PREFETCH_MADE.match(line):
        return SociEvent("prefetch", m.group(1), detail=m.group(2))
    if m := _PREFETCH_MISSING.search(line):
        return SociEvent("prefetch-missing", detail=_unquote(m.group(1)))
    if m := _PUSH_LINE.match(line):
        kind = {
            "pushing soci index": "index",
            "pushing artifact": "uploading",
            "successfully pushed artifact": "uploaded",
            "skipped artifact": "exists",
        }[m.group(1)]
        return SociEvent(kind, m.group(2))  # type: ignore[arg-type]
    return None


def _unquote(text: str) -> str:
    """A string as logrus quoted it inside ``msg="..."`` (Go's escapes; JSON's cover the usual ones)."""
    try:
        value = json.loads(f'"{text}"')
    except ValueError:
        return text
    return value if isinstance(value, str) else text


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and for how long, a failed ``soci push`` is tried again."""

    attempts: int = 4
    max_seconds: float = 120.0
    initial_wait: float = 1.0
    max_wait: float = 15.0


def find_soci(explicit: str | None = None, *, project_root: Path | None = None) -> str | None:
    """Locate soci: ``--soci-bin``, then ``$SOCI_BIN``, then ``.deps/bin/soci`` of the checkout, then PATH."""
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("SOCI_BIN"):
        candidates.append(os.environ["SOCI_BIN"])
    root = project_root or Path(__file__).resolve().parents[2]
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
    except subprocess.CalledProcessError as exc:
        raise MissingDependencyError(
            f"{binary} is not a soci binary: '--version' exited with status {exc.returncode}",
            hint="run scripts/bootstrap.sh, set SOCI_BIN or pass --soci-bin",
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise MissingDependencyError(f"soci at {binary} does not run: {one_line(exc)}") from exc
    if not out.startswith("soci version"):
        raise MissingDependencyError(
            f"{binary} is not a soci binary (its --version says {one_line(out)[:80]!r})",
            hint="run scripts/bootstrap.sh, set SOCI_BIN or pass --soci-bin",
        )
    # "soci version v0.15.0 7716bd67..." -> "v0.15.0 7716bd67..."
    return out.split("version", 1)[-1].strip()


def unindexable_reason(media_type: str, size: int, min_layer_size: int) -> str | None:
    """Why soci would make no zTOC for a layer, known from its descriptor alone; None if it would make one.
    soci v0.15.0 skips layers smaller than --min-layer-size (one of exactly the minimum is indexed) and layers
    that are neither gzip nor uncompressed tar (zstd), without reading them."""
    if "zstd" in media_type:
        return "compressed with zstd, which soci v0.15.0 cannot index"
    if size < min_layer_size:
        return f"under --min-layer-size ({min_layer_size} bytes)"
    return None


def check_soci(explicit: str | None) -> str:
    """The soci binary this run will use, checked before any network or daemon work.

    Raises MissingDependencyError (exit 9) when it is missing, not executable, not soci, or of a release
    series whose flags and output soci-wrapper does not know.
    """
    binary = find_soci(explicit)
    if binary is None:
        where = f" at {explicit}" if explicit else ""
        raise MissingDependencyError(
            f"soci not found{where}", hint="run scripts/bootstrap.sh, set SOCI_BIN or pass --soci-bin"
        )
    version = soci_version(binary)
    m = _VERSION_RE.search(version)
    if m is None or f"v{m.group(1)}.{m.group(2)}" != SUPPORTED_SERIES:
        raise MissingDependencyError(
            f"soci at {binary} is {version.split()[0] if version else 'of an unknown version'}; "
            f"soci-wrapper supports {SUPPORTED_SERIES}.x",
            hint=f"run scripts/bootstrap.sh (it builds soci {SOCI_RELEASE}) or pass --soci-bin",
        )
    return binary


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
    # "soci": indexes and zTOCs in <root>/content (v1); "containerd": in containerd's content store (v2).
    content_store: Literal["soci", "containerd"] = "containerd"
    push_retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Set in the environment of every soci this object runs.
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # The soci processes of this object running right now (for ``stop``).
    _procs: set[subprocess.Popen[str]] = field(default_factory=set, init=False, repr=False, compare=False)
    _stopped: bool = field(default=False, init=False, repr=False, compare=False)

    def stop(self) -> None:
        """Kill every soci this object runs, now and from now on, and what each started (the thread waiting
        for it gets SociError "killed by SIGKILL")."""
        with _running_lock:
            self._stopped = True
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)

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
        prefetch_files: Sequence[str] = (),
        on_event: EventSink | None = None,
    ) -> None:
        """``soci create``: a SOCI index manifest v1 (a zTOC per large layer) for image record ``ref``, with a
        prefetch artifact per layer holding any of ``prefetch_files``."""
        args = ["create", *_platform_args(platforms, all_platforms), *_size_args(span_size, min_layer_size)]
        if force:
            args.append("--force")
        with self._prefetch_args(prefetch_files) as prefetch:
            self._run(
                [*args, *prefetch, ref], what="soci create", min_layer_size=min_layer_size, on_event=on_event
            )

    @contextlib.contextmanager
    def _prefetch_args(self, files: Sequence[str]) -> Iterator[list[str]]:
        """``--prefetch-files-json FILE`` for ``files`` (none for an empty list): always a file, whatever the
        list's length (no argv limit), removed after the call."""
        if not files:
            yield []
            return
        where = self.tmp_dir or self.root
        where.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="prefetch-", suffix=".json", dir=where)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(list(files), out)
            yield ["--prefetch-files-json", name]
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def rebuild_db(self) -> None:
        """``soci rebuild-db``: record in soci's artifacts database the v1 indexes (and their zTOCs) found in
        its content store; the way zTOCs from elsewhere are handed to ``soci create`` (see wrapper.soci.reuse)."""
        self._run(["rebuild-db"], what="soci rebuild-db")

    def ztoc_info(self, ztoc_digest: str) -> dict[str, object]:
        """``soci ztoc info``: the zTOC decoded by soci (version, span size, files with offsets and sizes).
        The zTOC must be in soci's store and its artifacts database (``rebuild_db``)."""
        out = self._run(["ztoc", "info", ztoc_digest], what="soci ztoc info")
        try:
            info = json.loads(out)
        except ValueError as exc:
            raise SociError(f"soci ztoc info {ztoc_digest} printed no JSON: {one_line(out)[:160]}") from exc
        if not isinstance(info, dict):
            raise SociError(f"soci ztoc info {ztoc_digest} printed {type(info).__name__}, not an object")
        return info

    def ztoc_get_file(self, ztoc_digest: str, name: str, dest: Path) -> None:
        """``soci ztoc get-file -o DEST``: file ``name`` of the layer, extracted through its zTOC, written to
        ``dest`` (made readable: soci creates it with mode 0000). soci reads the layer from containerd's
        content store and finds it through its artifacts database. (Without ``-o`` soci prints the bytes
        with one extra newline at the end.)"""
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        self._run(["ztoc", "get-file", "-o", str(dest), ztoc_digest, name], what="soci ztoc get-file")
        if not dest.exists():  # soci ignores its own write error
            raise SociError(f"soci ztoc get-file {ztoc_digest} {name!r} wrote nothing to {dest}")
        os.chmod(dest, 0o600)

    def index_digests(self, ref: str, platform: Platform) -> list[str]:
        """Digests of the SOCI indexes soci recorded for ``ref``'s manifest of ``platform``, newest first."""
        out = self._run(
            ["index", "list", "--ref", ref, "--platform", str(platform), "--quiet"], what="soci index list"
        )
        return [line.strip() for line in out.splitlines() if _DIGEST_LINE.match(line.strip())]

    def has_blob(self, digest: str) -> bool:
        """Whether soci's own content store holds ``digest``."""
        return self._blob_path(digest).is_file()

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "content" / "blobs" / algorithm / hexdigest

    def read_blob(self, digest: str) -> bytes:
        """A small blob (an index manifest) from soci's own content store."""
        if self.content_store != "soci":
            raise ValueError(
                "read_blob reads soci's content store; use containerd's for --content-store containerd"
            )
        try:
            return self._blob_path(digest).read_bytes()
        except OSError as exc:
            raise SociError(f"{digest} is not in soci's content store ({self.root / 'content'})") from exc

    def push(
        self,
        ref: str,
        auth: PushAuth,
        *,
        platforms: Sequence[Platform] = (),
        on_event: EventSink | None = None,
    ) -> PushOutcome:
        """``soci push`` of the newest v1 index of each platform of ``ref``, tried again (up to the retry
        policy's budget) when it fails for a transient reason; soci skips what the registry already has."""
        args = ["push", "--existing-index", "allow", *_platform_args(platforms, False)]
        if auth.plain_http:
            args.append("--plain-http")
        policy = self.push_retry
        outcome = PushOutcome()
        started = time.monotonic()

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            reason = _reason(exc)
            log.debug("soci push attempt %d failed: %s", state.attempt_number, exc)
            if on_event is not None:
                on_event(
                    SociEvent(
                        "retry", detail=f"{reason}; attempt {state.attempt_number + 1} in {delay:.1f} s"
                    )
                )

        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
            wait=wait_exponential_jitter(initial=policy.initial_wait, max=policy.max_wait),
            retry=retry_if_exception(lambda exc: isinstance(exc, SociError) and exc.transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            with _push_environment(auth, self.tmp_dir) as env:
                for attempt in retrying:
                    with attempt:
                        outcome.attempts += 1
                        out = self._run([*args, ref], what="soci push", env=env, on_event=on_event)
        except SociError as exc:
            if outcome.attempts > 1:
                took = time.monotonic() - started
                exc.message = f"{exc.message} (after {outcome.attempts} attempts over {took:.1f} s)"
            raise
        outcome.seconds = round(time.monotonic() - started, 3)
        outcome.lines = [line for line in out.splitlines() if line.strip()]
        return outcome

    def convert(
        self,
        src: str,
        dst: str,
        *,
        platforms: Sequence[Platform] = (),
        all_platforms: bool = False,
        span_size: int | None = None,
        min_layer_size: int | None = None,
        prefetch_files: Sequence[str] = (),
        on_event: EventSink | None = None,
    ) -> None:
        """``soci convert``: a SOCI-enabled image (index manifest v2) as new image record ``dst``, with a
        prefetch artifact per layer holding any of ``prefetch_files``."""
        args = ["convert", *_platform_args(platforms, all_platforms), *_size_args(span_size, min_layer_size)]
        with self._prefetch_args(prefetch_files) as prefetch:
            self._run(
                [*args, *prefetch, src, dst],
                what="soci convert",
                min_layer_size=min_layer_size,
                on_event=on_event,
            )

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
            self.content_store,
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
        on_event: EventSink | None = None,
    ) -> str:
        """Run soci ``args``; stdout is read line by line as it comes (events go to ``on_event``)."""
        argv = self.argv(args)
        self.root.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ)
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            child_env["TMPDIR"] = str(self.tmp_dir)
        child_env.update(self.extra_env)
        child_env.update(env or {})
        log.debug("running %s", " ".join(argv))
        held = _SIGNALS.hold()  # a signal while soci starts would leave it running: deliver it just after
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                env=child_env,
                start_new_session=True,  # so a timeout or a signal can stop soci and anything it started
            )
        except FileNotFoundError as exc:
            _SIGNALS.release(held)
            raise MissingDependencyError(
                f"soci not found at {self.binary}", hint="run scripts/bootstrap.sh or pass --soci-bin"
            ) from exc
        except PermissionError as exc:
            _SIGNALS.release(held)
            raise MissingDependencyError(f"soci at {self.binary} is not executable") from exc
        except BaseException:
            _SIGNALS.release(held)
            raise
        stdout: list[str] = []
        stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=_read_lines, args=(proc.stdout, stdout, on_event), daemon=True),
            threading.Thread(target=_read_lines, args=(proc.stderr, stderr, on_event), daemon=True),
        ]
        try:  # from here on, a signal (KeyboardInterrupt) stops soci's process group whenever it comes
            _SIGNALS.release(held)  # raises a signal that came while soci was starting
            with _running_lock:
                _running.add(proc)
                self._procs.add(proc)
                stopped = self._stopped
            if stopped:
                _kill_group(proc)
            for reader in readers:
                reader.start()
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise SociError(
                f"{what} did not finish within {self.timeout:g} s and was stopped",
                hint="raise --soci-timeout for very large images",
            ) from exc
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            # The pipes close when soci (and whatever it started in its group) is gone; a process that left
            # the group may keep them open: do not wait for it long, its output no longer matters.
            for reader in readers:
                if reader.is_alive():
                    reader.join(timeout=2 if proc.returncode is None or proc.returncode < 0 else 10)
            with _running_lock:
                _running.discard(proc)
                self._procs.discard(proc)
        err_text = "".join(stderr)
        if proc.returncode != 0:
            if proc.returncode < 0:
                sig = signal.Signals(-proc.returncode).name
                killed = SociError(f"{what} was killed by {sig}", detail=stderr_tail(err_text) or None)
                raise killed
            raise classify_failure(what, proc.returncode, err_text, min_layer_size=min_layer_size)
        if err_text.strip():
            log.debug("%s stderr: %s", what, err_text.strip())
        return "".join(stdout)


@dataclass
class PushOutcome:
    """What a ``soci push`` did: its output lines, how many attempts it took and how long."""

    lines: list[str] = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0


def _read_lines(stream: Iterator[str], into: list[str], on_event: EventSink | None) -> None:
    for line in stream:
        into.append(line)
        if on_event is not None and (event := parse_event(line)) is not None:
            try:
                on_event(event)
            except Exception:  # a display problem must not break the run
                log.debug("progress callback failed", exc_info=True)


def _reason(exc: BaseException | None) -> str:
    """A short reason for a retry line: soci's last words, without the long URL."""
    if exc is None:
        return "failed"
    text = getattr(exc, "message", str(exc))
    text = re.sub(r'"?https?://\S+', "", text)
    return one_line(text)[:160]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL soci's process group and reap soci (its output pipes are read by the reader threads)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


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
            f"nothing to index: soci made no zTOC (every layer is under the minimum layer size of {size}, "
            "or in a format it cannot index)",
            hint="lower --min-layer-size to index smaller layers; soci indexes gzip and uncompressed layers",
        )
    elif "dial unix" in low:  # containerd's socket (our registries are reached over TCP)
        err = _as_soci(ContainerdError(f"{what}: cannot reach containerd: {last}"))
    elif _PUSH_RACE.search(tail):
        err = _as_soci(RegistryError(f"{what}: the registry did not have every blob of the index: {last}"))
    elif refused := _MANIFEST_REFUSED.search(tail):
        # A registry that does not take SOCI index manifest v1 (Docker Hub refuses manifests with a subject or
        # an artifactType): no retry helps, V2 (an ordinary image index and manifests) does. The registry's
        # words, each part once (oras-go repeats the error code's text).
        why: list[str] = []
        for part in refused.group("why").split(": "):
            if part.strip() and part.strip().lower() not in (w.lower() for w in why):
                why.append(part.strip())
        reason = ": ".join(why)[:200]
        err = _as_soci(
            RegistryError(
                f"{what}: the registry refused the SOCI index manifest (HTTP {refused.group('status')}"
                f"{': ' + reason if reason else ''}); it does not accept SOCI index manifest v1",
                hint="use --soci-version V2 with --output-tag TAG: a SOCI-enabled image, which such registries take",
            )
        )
    elif full := _NO_SPACE.search(tail):
        where = os.path.dirname(full.group("path")) if full.group("path") else "its temporary directory"
        err = SociError(
            f"{what}: no space left on device in {where}",
            hint="soci copies each layer it indexes there first: point --work-dir at a file system with room "
            "for the large layers twice, containerd's copy and soci's",
        )
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
    err.transient = is_transient_failure(stderr)
    return err


# oras-go (soci push): `PUT "https://host/v2/repo/manifests/sha256:...": response status code 400: manifest
# invalid: manifest invalid: <the registry's detail>` when the registry refuses the manifest it is given.
_MANIFEST_REFUSED = re.compile(
    r'\bPUT "?[^"\s]*/manifests/[^"\s]+"?: response status code (?P<status>400|415|422)\b:?\s*(?P<why>.*)$',
    re.IGNORECASE | re.MULTILINE,
)
# Go's os errors: `write /path/file: no space left on device` (or `open`, `copy`, ...).
_NO_SPACE = re.compile(r"(?:(?P<path>/[^\s:]+):\s*)?no space left on device", re.IGNORECASE)


# Two pushes of the same index at once (two runs, one image): the registry may refuse the manifest because the
# other push's upload of a blob it lists is not complete yet. soci push again finds and uploads what is missing.
_PUSH_RACE = re.compile(r"manifest blob unknown|blob unknown to registry", re.IGNORECASE)


def is_transient_failure(stderr: str) -> bool:
    """Whether soci failed for a reason that another attempt may not meet (5xx, 429, reset, timeout, a blob
    another push of the same index had not finished)."""
    text = stderr_tail(stderr, 4)
    if _PUSH_RACE.search(text):
        return True
    return bool(_TRANSIENT.search(text)) and not _PERMANENT.search(text)


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

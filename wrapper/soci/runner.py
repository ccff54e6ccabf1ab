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
config.json 0600, deleted right after the call; ``wrapper.registry.dockerconfig``), never through ``--user``
on its command line.

soci runs as a child of the process supervisor (``wrapper.system.supervisor``): in a process group of its own,
stopped with what it started, never outliving soci-wrapper. Its failures keep their kind (``AuthError``, ...:
``wrapper.soci.failures``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
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

from wrapper.core.errors import MissingDependencyError, SociError
from wrapper.core.models import Platform
from wrapper.core.report import EventSink, SociEvent
from wrapper.core.util import one_line
from wrapper.registry.dockerconfig import PrivateDockerConfig
from wrapper.soci.binary import soci_version
from wrapper.soci.failures import classify_failure, stderr_tail
from wrapper.system.supervisor import Child, supervisor

log = logging.getLogger("wrapper.soci.runner")

DEFAULT_TIMEOUT = 3600.0
_DIGEST_LINE = re.compile(r"^sha256:[a-f0-9]{64}$")

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


def kill_running_soci() -> None:
    """Stop every soci this process is running (and what each started): on an interrupt of a run that has
    several images in flight, whose soci calls run in worker threads."""
    supervisor().kill_tagged("soci")


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


def unindexable_reason(media_type: str, size: int, min_layer_size: int) -> str | None:
    """Why soci would make no zTOC for a layer, known from its descriptor alone; None if it would make one.
    soci v0.15.0 skips layers smaller than --min-layer-size (one of exactly the minimum is indexed) and layers
    that are neither gzip nor uncompressed tar (zstd), without reading them."""
    if "zstd" in media_type:
        return "compressed with zstd, which soci v0.15.0 cannot index"
    if size < min_layer_size:
        return f"under --min-layer-size ({min_layer_size} bytes)"
    return None


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
    _procs: set[Child] = field(default_factory=set, init=False, repr=False, compare=False)
    _stopped: bool = field(default=False, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def stop(self) -> None:
        """Kill every soci this object runs, now and from now on, and what each started (the thread waiting
        for it gets SociError "killed by SIGKILL")."""
        with self._lock:
            self._stopped = True
            procs = list(self._procs)
        for proc in procs:
            proc.kill()

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
            with PrivateDockerConfig(
                auth.host, auth.username, auth.password, ca_file=auth.ca_file, parent=self.tmp_dir
            ) as env:
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
        try:
            # Its own process group (so a timeout or a signal stops soci and anything it started); a signal
            # that comes while it starts is raised once it has, and stops it.
            proc = supervisor().start(
                argv,
                name=what,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env,
                tags=("soci",),
            )
        except FileNotFoundError as exc:
            raise MissingDependencyError(
                f"soci not found at {self.binary}", hint="run scripts/bootstrap.sh or pass --soci-bin"
            ) from exc
        except PermissionError as exc:
            raise MissingDependencyError(f"soci at {self.binary} is not executable") from exc
        stdout: list[str] = []
        stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=_read_lines, args=(proc.stdout, stdout, on_event), daemon=True),
            threading.Thread(target=_read_lines, args=(proc.stderr, stderr, on_event), daemon=True),
        ]
        try:  # from here on, a signal (KeyboardInterrupt) stops soci's process group whenever it comes
            with self._lock:
                self._procs.add(proc)
                stopped = self._stopped
            if stopped:
                proc.kill()
            for reader in readers:
                reader.start()
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise SociError(
                f"{what} did not finish within {self.timeout:g} s and was stopped",
                hint="raise --soci-timeout for very large images",
            ) from exc
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stop(0)  # reaped, and what it left in its group stopped
            # The pipes close when soci (and whatever it started in its group) is gone; a process that left
            # the group may keep them open: do not wait for it long, its output no longer matters.
            for reader in readers:
                if reader.is_alive():
                    reader.join(timeout=2 if proc.returncode is None or proc.returncode < 0 else 10)
            with self._lock:
                self._procs.discard(proc)
        err_text = "".join(stderr)
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        if code != 0:
            if code < 0:
                sig = signal.Signals(-code).name
                killed = SociError(f"{what} was killed by {sig}", detail=stderr_tail(err_text) or None)
                raise killed
            raise classify_failure(what, code, err_text, min_layer_size=min_layer_size)
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

"""Progress output of ``soci-wrapper index``: rich on a terminal, plain lines otherwise, nothing with --quiet.

The terminal tests run the CLI on a pseudo-terminal of a fixed size and replay what it wrote through a small
terminal emulator (``Screen``): rich redraws its live display with cursor movements and line erasures, so
what a user sees at each moment is only known by applying them, not by stripping escape sequences.
``replay`` gives every state the screen goes through; the checks say which live rows were visible while
which stage line was the latest one.

The image: a 2 MiB layer (gets a zTOC) and a 100 KiB one (under ``--min-layer-size 1MiB``), real soci.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, ROOT, push, run_cli, seed_for
from tests.imagefactory import AMD64, ARM64, Image, LayerSpec, build_image, index_of
from wrapper.core.models import SOCI_INDEX_V1, SOCI_LAYER_DIGEST_ANNOTATION
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.pullmodes import V1_NOTE

COLUMNS, ROWS = 120, 60
SMALL = 100 * 1024

# Live rows: a pull bar (DownloadColumn's "done/total unit" after a blob's or the total's name; in a V1 run the
# only byte bars are the pull's, soci push being counted steps), and the spinner of a counted step (its M/N
# count and elapsed time).
PULL_BAR = re.compile(
    r"^(?:total|(?:layer|config|manifest) [0-9a-f]{12})\b.*\b\d+(?:\.\d+)?/\d+(?:\.\d+)? (?:bytes|KiB|MiB|GiB)\b"
)
STAGE_LINE = re.compile(r"^==> (\w+)")
BAR_CHARS = re.compile(r"[━╸╺]|[\u2800-\u28ff]")  # rich's bar, and the braille of its "dots" spinner


def spinner_row(label: str) -> re.Pattern[str]:
    return re.compile(rf"^\S {re.escape(label)} .*\b\d+/(?:\d+|\?) .*\d+:\d\d:\d\d$")


# -- a terminal, as far as rich uses one ----------------------------------------------------------------------
_TOKEN = re.compile(
    r"\x1b\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC (hyperlinks, titles): no effect on the text
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|(?P<control>[\x00-\x1f\x7f])"
    r"|(?P<text>[^\x00-\x1f\x7f\x1b]+)"
)


class Screen:
    """A VT100-ish screen of ``columns`` x ``rows`` with its scrollback: text with autowrap, CR, LF (as CR LF,
    like a tty's onlcr), BS, TAB, cursor movement (CSI A B C D G H), erase in line (K) and display (J). Colours
    and modes are ignored. Cursor movement stays within the visible rows, as on a terminal."""

    def __init__(self, columns: int = COLUMNS, rows: int = ROWS) -> None:
        self.columns, self.rows = columns, rows
        self.lines: list[list[str]] = [[]]
        self.row = 0
        self.col = 0

    @property
    def top(self) -> int:
        """Index in ``lines`` of the first visible row."""
        return max(0, len(self.lines) - self.rows)

    def _goto_row(self, row: int) -> None:
        self.row = max(self.top, row)
        while len(self.lines) <= self.row:
            self.lines.append([])

    def _newline(self) -> None:
        self._goto_row(self.row + 1)
        self.col = 0

    def _put(self, text: str) -> None:
        for ch in text:
            if self.col >= self.columns:  # autowrap when a character follows a full line
                self._newline()
            line = self.lines[self.row]
            if len(line) < self.col:
                line.extend(" " * (self.col - len(line)))
            if self.col < len(line):
                line[self.col] = ch
            else:
                line.append(ch)
            self.col += 1

    def _erase_line(self, mode: int) -> None:
        line = self.lines[self.row]
        if mode == 0:
            del line[self.col :]
        elif mode == 1:
            line[: self.col + 1] = [" "] * min(len(line), self.col + 1)
        else:
            line.clear()

    def _csi(self, params: str, final: str) -> None:
        if params.startswith("?"):  # private modes (cursor visibility...)
            return
        numbers = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        n = numbers[0] if numbers and numbers[0] else 1
        mode = numbers[0] if numbers else 0
        if final == "A":
            self.row = max(self.top, self.row - n)
        elif final == "B":
            self._goto_row(min(self.row + n, self.top + self.rows - 1))
        elif final == "C":
            self.col = min(self.columns - 1, self.col + n)
        elif final == "D":
            self.col = max(0, min(self.col, self.columns) - n)
        elif final == "G":
            self.col = min(self.columns - 1, n - 1)
        elif final in "Hf":
            row = numbers[0] if numbers and numbers[0] else 1
            col = numbers[1] if len(numbers) > 1 and numbers[1] else 1
            self._goto_row(self.top + row - 1)
            self.col = col - 1
        elif final == "K":
            self._erase_line(mode)
        elif final == "J":
            if mode == 0:
                self._erase_line(0)
                for line in self.lines[self.row + 1 :]:
                    line.clear()
            elif mode == 1:
                for line in self.lines[self.top : self.row]:
                    line.clear()
                self._erase_line(1)
            else:
                for line in self.lines[self.top :]:
                    line.clear()

    def feed(self, data: str, after: Callable[[Screen], None] | None = None) -> None:
        """Apply ``data``; ``after`` is called after each piece of text and each control sequence."""
        for m in _TOKEN.finditer(data):
            if m.group("text") is not None:
                self._put(m.group("text"))
            elif (control := m.group("control")) is not None:
                if control == "\r":
                    self.col = 0
                elif control in "\n\x0b\x0c":
                    self._newline()
                elif control == "\b":
                    self.col = max(0, min(self.col, self.columns) - 1)
                elif control == "\t":
                    self.col = min(self.columns - 1, (self.col // 8 + 1) * 8)
            elif m.group("final") is not None:
                self._csi(m.group("params"), m.group("final"))
            if after is not None:
                after(self)

    def text(self) -> list[str]:
        """Every row (scrollback and screen) as text, without the blank rows at the end."""
        out = ["".join(line).rstrip() for line in self.lines]
        while out and not out[-1]:
            out.pop()
        return out


def replay(data: str, columns: int = COLUMNS, rows: int = ROWS) -> list[list[str]]:
    """Every state the screen goes through while ``data`` is written to it (consecutive repeats dropped)."""
    states: list[list[str]] = []

    def snapshot(screen: Screen) -> None:
        text = screen.text()
        if not states or states[-1] != text:
            states.append(text)

    screen = Screen(columns, rows)
    snapshot(screen)
    screen.feed(data, snapshot)
    return states


def latest_stage(state: Sequence[str]) -> str | None:
    """The stage whose ``==> name`` line is the last one on screen: the stage in progress at that moment."""
    names = [m.group(1) for row in state if (m := STAGE_LINE.match(row))]
    return names[-1] if names else None


def stages_showing(states: Sequence[Sequence[str]], pattern: re.Pattern[str]) -> dict[str | None, list[str]]:
    """For each stage: the rows matching ``pattern`` that were on screen while it was the latest stage."""
    seen: dict[str | None, list[str]] = {}
    for state in states:
        rows = [row for row in state if pattern.search(row)]
        if rows:
            bucket = seen.setdefault(latest_stage(state), [])
            bucket.extend(row for row in rows if row not in bucket)
    return seen


# -- running the CLI on a pseudo-terminal ---------------------------------------------------------------------
@dataclass
class TerminalRun:
    returncode: int
    terminal: str  # what the terminal of stdout received (and of stderr, unless separate)
    stderr: str | None  # what a separate terminal for stderr received


_RICH_ENV = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES", "COLORTERM")


def _terminal(columns: int, rows: int) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


def run_in_terminal(
    *args: str,
    env: dict[str, str] | None = None,
    separate_stderr: bool = False,
    columns: int = COLUMNS,
    rows: int = ROWS,
    timeout: float = 120,
) -> TerminalRun:
    """``soci-wrapper ARGS`` with stdin, stdout and stderr on a pseudo-terminal of ``columns`` x ``rows``
    (stderr on a second one with ``separate_stderr``); everything it writes is read until it exits."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SOCI_WRAPPER_", "JUPYTER_")) and k not in _RICH_ENV
    }
    full_env["TERM"] = "xterm-256color"
    full_env.update(env or {})
    out_master, out_slave = _terminal(columns, rows)
    err_master, err_slave = _terminal(columns, rows) if separate_stderr else (None, None)
    masters = [out_master] + ([err_master] if err_master is not None else [])
    received = {fd: bytearray() for fd in masters}
    try:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wrapper.cli.main", *args],
                stdin=out_slave,
                stdout=out_slave,
                stderr=err_slave if err_slave is not None else out_slave,
                env=full_env,
                cwd=ROOT,
                start_new_session=True,
            )
        finally:
            os.close(out_slave)
            if err_slave is not None:
                os.close(err_slave)
        deadline = time.monotonic() + timeout
        open_fds = set(masters)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                got = {fd: bytes(data[-2000:]) for fd, data in received.items()}
                raise AssertionError(f"soci-wrapper did not finish in {timeout} s; last output: {got}")
            ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
            if not ready and proc.poll() is not None:
                break  # exited, and a grandchild holds the terminal open without writing: enough
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: every writer has closed its side
                    data = b""
                if data:
                    received[fd] += data
                else:
                    open_fds.discard(fd)
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for fd in masters:
            os.close(fd)
    return TerminalRun(
        returncode,
        received[out_master].decode(errors="replace"),
        received[err_master].decode(errors="replace") if err_master is not None else None,
    )


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(CredentialStore(use_ecr=False)) as c:
        yield c


def two_layer_image(tmp_path: Path, request: pytest.FixtureRequest) -> Image:
    seed = seed_for(request)
    return build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed), LayerSpec(SMALL, seed=seed + 1)])


def short(digest: str) -> str:
    return digest.split(":", 1)[1][:12]


def soci_index_of(client: RegistryClient, ref: Reference, image: Image) -> tuple[str, str]:
    """The digests of ``image``'s one SOCI v1 index in the registry, and of its one zTOC."""
    found = client.get_referrers(ref, image.digest, artifact_type=SOCI_INDEX_V1)
    assert len(found) == 1, found
    doc = client.get_manifest(ref, found[0].digest).json()
    assert [z["annotations"][SOCI_LAYER_DIGEST_ANNOTATION] for z in doc["layers"]] == [image.layers[0].digest]
    return found[0].digest, doc["layers"][0]["digest"]


def slow_starting_soci(directory: Path, real_soci: str, delay: float = 0.5) -> str:
    """The real soci, started ``delay`` seconds late for ``create``: a 2 MiB image takes soci about 0.1 s,
    less than rich's refresh period, so without the delay nothing guarantees that the spinner is ever drawn
    while soci works. Everything soci does is still done by the real binary."""
    script = directory / "slow-starting-soci"
    script.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  case "$arg" in create) sleep {delay}; break ;; esac\n'
        "done\n"
        f'exec {real_soci} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def layer_lines(image: Image, ztoc: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The per-layer lines of the index stage for ``image`` (2 MiB layer built, 100 KiB layer skipped)."""
    big, small = image.layers
    built = re.compile(
        rf"^    \[(\d)/2\] zTOC built for layer {short(big.digest)} \(2\.0 MiB\) -> {short(ztoc)}$"
    )
    skipped = re.compile(
        rf"^    \[(\d)/2\] skipped for layer {short(small.digest)} \(100\.\d KiB\): "
        rf"size {small.size} is less than min-layer-size {MIB}$"
    )
    return built, skipped


def one_match(rows: Sequence[str], pattern: re.Pattern[str]) -> re.Match[str]:
    found = [m for row in rows if (m := pattern.match(row))]
    assert len(found) == 1, f"{pattern.pattern!r} matched {len(found)} rows of:\n" + "\n".join(rows)
    return found[0]


# The stages every V1 run of a new image goes through, in this order (others, such as zTOC reuse, may come
# between them).
STAGES = ["authenticate", "resolve", "check", "containerd", "pull", "index", "push"]


def stage_rows(rows: Sequence[str]) -> dict[str, int]:
    """Stage name -> index of its ``==> name`` row; each of STAGES must be there once, in order."""
    found = [(m.group(1), i) for i, row in enumerate(rows) if (m := STAGE_LINE.match(row))]
    names = [name for name, _ in found]
    assert [n for n in names if n in STAGES] == STAGES, "stages out of order:\n" + "\n".join(rows)
    return dict(found)


# -- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.soci
def test_terminal_shows_live_progress_stage_by_stage(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    image = two_layer_image(tmp_path, request)
    ref = push(registry, client, "progress/tty", image)
    soci = slow_starting_soci(tmp_path, soci_bin)
    run = run_in_terminal(
        "index", str(ref), "--soci-bin", soci, "--min-layer-size", "1MiB", "--work-dir", str(tmp_path / "w")
    )
    assert run.returncode == 0, run.terminal
    assert "\x1b[" in run.terminal, "no escape sequence: not the terminal display"
    states = replay(run.terminal)
    final = states[-1]
    transcript = "\n".join(final)

    # The pull's bars are visible during the pull, and gone before the index stage's line.
    pull_bars = stages_showing(states, PULL_BAR)
    assert pull_bars.get("pull"), f"no pull bar was ever drawn:\n{run.terminal!r}"
    assert set(pull_bars) == {"pull"}, f"pull bars still on screen in a later stage: {pull_bars}"
    # soci create's spinner, with its M/N count and elapsed time, only during the index stage.
    spinners = stages_showing(states, spinner_row("soci create linux/amd64"))
    assert spinners.get("index"), f"no soci create spinner was drawn:\n{run.terminal!r}"
    assert set(spinners) == {"index"}, f"the spinner outlived the index stage: {spinners}"
    assert all(re.search(r"\b[0-2]/2\b", row) for row in spinners["index"])

    # What stays on screen: every stage once and in order, the per-layer lines and counts, no bar left.
    at = stage_rows(final)
    assert not [row for row in final if BAR_CHARS.search(row)], transcript
    index_digest, ztoc = soci_index_of(client, ref, image)
    index_at, push_at = at["index"], at["push"]
    assert final[index_at] == "==> index: soci create (SOCI index manifest v1)"
    in_index = final[index_at + 1 : push_at]
    built_line, skipped_line = layer_lines(image, ztoc)
    positions = {one_match(in_index, built_line).group(1), one_match(in_index, skipped_line).group(1)}
    assert positions == {"1", "2"}, transcript
    one_match(in_index, re.compile(r"^    soci create linux/amd64: 1 built, 1 skipped in \d+\.\d s$"))
    assert not any(short(image.layers[1].digest) in row for row in final[:index_at]), (
        "the small layer was pulled"
    )
    one_match(final[push_at:], re.compile(rf"^    \[\d\] pushed {short(index_digest)}$"))

    # The summary table, after the progress.
    table_at = next(i for i, row in enumerate(final) if row.strip() == "SOCI index")
    assert table_at > push_at
    table = final[table_at:]
    one_match(table, re.compile(r"^ status\s+indexed$"))
    one_match(table, re.compile(r"^ platforms\s+linux/amd64$"))
    one_match(table, re.compile(rf"^ index linux/amd64\s+{index_digest}$"))
    one_match(table, re.compile(r"^\s+1 zTOC; 1 layer indexed \(2\.0 MiB\), 1 skipped \(100\.\d KiB\)$"))


def plain_stderr(registry: RegistryServer, ref: Reference, soci_bin: str, work: Path, how: str) -> str:
    args = ("index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work))
    if how == "pipes":
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"(?m)^ status\s+indexed\s*$", proc.stdout), proc.stdout
        return proc.stderr
    run = run_in_terminal(*args, env={"NO_COLOR": "1"}, separate_stderr=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr is not None
    assert re.search(r"(?m)^ status\s+indexed\s*$", "\n".join(replay(run.terminal)[-1])), run.terminal
    return run.stderr.replace("\r\n", "\n")


@pytest.mark.soci
@pytest.mark.parametrize("how", ["pipes", "terminal-with-NO_COLOR"])
def test_plain_progress_lines(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
    how: str,
) -> None:
    """Not on a terminal (or with NO_COLOR): one plain line per event, the stages in order."""
    image = two_layer_image(tmp_path, request)
    ref = push(registry, client, f"progress/plain-{how.lower()}", image)
    stderr = plain_stderr(registry, ref, soci_bin, tmp_path / "work", how)
    assert "\x1b" not in stderr, repr(stderr)
    lines = stderr.splitlines()
    assert lines.pop() == f"note: {V1_NOTE}"  # a V1 run's note, last and once (tests/e2e/test_v1_note.py)
    assert all(line.startswith(("==> ", "    ")) for line in lines), stderr
    at = stage_rows(lines)
    assert lines[at["authenticate"]] == f"==> authenticate: {registry.host}"
    assert lines[at["resolve"]] == f"==> resolve: {ref}"
    assert lines[at["pull"]].startswith(f"==> pull: {ref} (linux/amd64;")
    assert lines[at["index"]] == "==> index: soci create (SOCI index manifest v1)"
    assert lines[at["push"]] == f"==> push: soci push to {registry.host}"
    assert at["push"] == max(at.values()), "a stage after push"

    big, small = image.layers
    pull = lines[at["pull"] + 1 : at["index"]]
    one_match(pull, re.compile(rf"^    start  layer {short(big.digest)} \(2\.0 MiB\)$"))
    one_match(pull, re.compile(rf"^    done   layer {short(big.digest)} 2\.0 MiB in \d+\.\d s \(.+/s\)$"))
    assert not any(short(small.digest) in line for line in pull), "the small layer was pulled"

    index_digest, ztoc = soci_index_of(client, ref, image)
    index = lines[at["index"] + 1 : at["push"]]
    assert len(index) == 4, stderr
    assert index[0] == "    soci create linux/amd64 (2 to go)"
    built_line, skipped_line = layer_lines(image, ztoc)
    assert {one_match(index[1:3], built_line).group(1), one_match(index[1:3], skipped_line).group(1)} == {
        "1",
        "2",
    }
    assert re.fullmatch(r"    soci create linux/amd64: 1 built, 1 skipped in \d+\.\d s", index[3]), index[3]

    pushed = lines[at["push"] + 1 :]
    assert pushed[0] == "    soci push" and re.fullmatch(r"    soci push: 1 attempt in \d+\.\d s", pushed[-1])
    steps = [
        re.fullmatch(r"    \[(\d+)\] (pushed|already there) ([0-9a-f]{12})", line) for line in pushed[1:-1]
    ]
    assert all(steps), pushed
    assert [int(m.group(1)) for m in steps if m] == list(range(1, len(steps) + 1))
    assert {m.group(3) for m in steps if m and m.group(2) == "pushed"} >= {short(index_digest), short(ztoc)}


@pytest.mark.soci
def test_quiet_shows_warnings_only(
    tmp_path: Path,
    registry: RegistryServer,
    client: RegistryClient,
    soci_bin: str,
    request: pytest.FixtureRequest,
) -> None:
    """--quiet on a terminal: no stage lines, no bars, nothing but the warning (a platform with only small
    layers); stdout still has the summary. stderr has a terminal of its own, so it is known to be empty."""
    image = two_layer_image(tmp_path, request)
    small_only = build_image(tmp_path, [LayerSpec(SMALL, seed=seed_for(request) + 2)], platform=ARM64)
    assert image.platform == AMD64
    ref = push(registry, client, "progress/quiet", index_of([image, small_only]))
    run = run_in_terminal(
        "index", str(ref), "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--all-platforms", "--quiet",
        "--work-dir", str(tmp_path / "work"), separate_stderr=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == (
        "warning: linux/arm64/v8: every layer is under --min-layer-size (1.0 MiB); no SOCI index\r\n"
    )
    final = replay(run.terminal)[-1]
    assert final[0].strip() == "SOCI index", final
    assert not any(STAGE_LINE.match(row) or BAR_CHARS.search(row) for row in final)
    index_digest, _ = soci_index_of(client, ref, image)
    one_match(final, re.compile(rf"^ index linux/amd64\s+{index_digest}$"))

    # --quiet --json: the report alone on stdout.
    again = run_cli(
        "index",
        str(ref),
        "--soci-bin",
        soci_bin,
        "--min-layer-size",
        "1MiB",
        "--all-platforms",
        "--quiet",
        "--json",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "already-indexed"
    assert (
        again.stderr
        == "warning: linux/arm64/v8: every layer is under --min-layer-size (1.0 MiB); no SOCI index\n"
    )

"""The progress reporters in-process, and the terminal emulator the end-to-end progress tests rely on.

RichReporter writes to a rich Console on a StringIO that rich treats as an interactive terminal; the output is
replayed through tests.e2e.test_progress's Screen, the same way the pseudo-terminal tests do it. A reporter
that does not close its bars before the next stage's line is caught by the same check (the negative control
below), so that check can fail.
"""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from tests.e2e.test_progress import PULL_BAR, Screen, latest_stage, replay, spinner_row, stages_showing
from wrapper.cli.display import PlainReporter, RichReporter
from wrapper.core.progress import QuietReporter

MIB = 1 << 20
LAYER = "sha256:" + "ab" * 32
CONFIG = "sha256:" + "cd" * 32


# -- the emulator ---------------------------------------------------------------------------------------------
def screen_of(data: str, columns: int = 20, rows: int = 5) -> list[str]:
    screen = Screen(columns, rows)
    screen.feed(data)
    return screen.text()


def test_screen_text_and_carriage_return() -> None:
    assert screen_of("abc\r\nxy\rZ") == ["abc", "Zy"]
    assert screen_of("one\ntwo") == ["one", "two"]  # LF as CR LF (a tty's onlcr)
    assert screen_of("\x1b[1;36m==>\x1b[0m \x1b[1mpull\x1b[0m") == ["==> pull"]  # colours are not text
    assert screen_of("\x1b]8;id=1;https://example.com\x1b\\link\x1b]8;;\x1b\\") == ["link"]


def test_screen_cursor_up_and_erase_like_rich_live() -> None:
    # rich's transient display: draw two rows, then CR, (up, erase line) for each.
    data = "kept\nbar one\nbar two\n" + "\r" + "\x1b[1A\x1b[2K" * 2 + "next"
    assert screen_of(data) == ["kept", "next"]
    assert screen_of("abcdef\r\x1b[3C\x1b[K") == ["abc"]  # erase to the end of the line
    assert screen_of("abcdef\x1b[3G\x1b[1K") == ["   def"]  # erase to the cursor


def test_screen_wraps_and_keeps_scrollback() -> None:
    assert screen_of("a" * 23, columns=10) == ["a" * 10, "a" * 10, "aaa"]
    assert screen_of("a" * 10 + "\r\n" + "b", columns=10) == ["a" * 10, "b"]  # no blank row after a full one
    # Cursor up stops at the top of the visible rows: it cannot reach the scrollback.
    assert screen_of("1\n2\n3\n4\n\x1b[9AX", rows=2) == ["1", "2", "3", "X"]
    assert screen_of("1\n2\n\x1b[2J", rows=5) == []


def test_replay_and_stages() -> None:
    states = replay("==> pull\nlayer aaaaaaaaaaaa ━━ 0.0/2.0 MiB\n\r\x1b[1A\x1b[2K==> index\n", 80, 10)
    assert states[0] == []
    assert ["==> pull", "layer aaaaaaaaaaaa ━━ 0.0/2.0 MiB"] in states
    assert states[-1] == ["==> pull", "==> index"]
    assert latest_stage(states[-1]) == "index" and latest_stage([]) is None
    assert set(stages_showing(states, PULL_BAR)) == {"pull"}


# -- RichReporter -----------------------------------------------------------------------------------------------
def terminal_console(buffer: io.StringIO) -> Console:
    return Console(
        file=buffer, force_terminal=True, force_interactive=True, width=100, height=40, color_system="256"
    )


def drive(reporter: RichReporter) -> None:
    """What an index run reports, with a stage that starts while a blob is still on screen."""
    reporter.stage("pull", "registry/app (linux/amd64; 1 layers)")
    reporter.blob_started(CONFIG, "config", 500)
    reporter.blob_advanced(CONFIG, 500)
    reporter.blob_finished(CONFIG)
    reporter.blob_started(LAYER, "layer", 2 * MIB)
    reporter.blob_advanced(LAYER, MIB)
    reporter.stage("index", "soci create (SOCI index manifest v1)")  # the layer's bar is still open
    reporter.steps_started("create", "soci create linux/amd64", total=2)
    time.sleep(0.35)  # the spinner is drawn by rich's refresh thread (10 per second)
    reporter.step("create", "zTOC built for layer abababababab (2.0 MiB) -> 0123456789ab")
    reporter.step("create", "skipped for layer cdcdcdcdcdcd (100.0 KiB): too small")
    reporter.steps_finished("create", "1 built, 1 skipped")
    reporter.stage("push", "soci push to registry")
    reporter.steps_started("push", "soci push")
    reporter.step("push", "pushed 0123456789ab")
    reporter.steps_finished("push", "1 attempt")
    reporter.close()


def test_rich_reporter_closes_each_stage_before_the_next() -> None:
    buffer = io.StringIO()
    drive(RichReporter(terminal_console(buffer)))
    states = replay(buffer.getvalue(), 100, 40)
    bars = stages_showing(states, PULL_BAR)
    assert any(row.startswith("layer abababababab") for row in bars["pull"]), bars
    assert set(bars) == {"pull"}, bars
    spinners = stages_showing(states, spinner_row("soci create linux/amd64"))
    assert set(spinners) == {"index"}, spinners
    counts = [re.search(r" (\d)/2 ", row) for row in spinners["index"]]
    # the count moves with the steps
    assert all(counts) and "1" in {m.group(1) for m in counts if m}, spinners
    final = states[-1]
    assert final[:2] == [
        "==> pull: registry/app (linux/amd64; 1 layers)",
        "==> index: soci create (SOCI index manifest v1)",
    ]
    assert final[2:5] == [
        "    [1/2] zTOC built for layer abababababab (2.0 MiB) -> 0123456789ab",
        "    [2/2] skipped for layer cdcdcdcdcdcd (100.0 KiB): too small",
        final[4],
    ]
    assert re.fullmatch(r"    soci create linux/amd64: 1 built, 1 skipped in 0\.\d s", final[4])
    assert final[5:7] == ["==> push: soci push to registry", "    [1] pushed 0123456789ab"]
    assert re.fullmatch(r"    soci push: 1 attempt in 0\.\d s", final[7]) and len(final) == 8


class LeavesBarsOpen(RichReporter):
    """A broken reporter: its stage line does not close the previous stage's bars."""

    def stage(self, name: str, detail: str = "") -> None:
        self._console.print(f"==> {name}" + (f": {detail}" if detail else ""), highlight=False, markup=False)


def test_the_check_catches_bars_left_open() -> None:
    buffer = io.StringIO()
    drive(LeavesBarsOpen(terminal_console(buffer)))
    states = replay(buffer.getvalue(), 100, 40)
    assert "index" in stages_showing(states, PULL_BAR)
    # ...which the final screen alone does not show: the transient bars are gone by then.
    assert not [row for row in states[-1] if PULL_BAR.search(row)]


# -- plain and quiet --------------------------------------------------------------------------------------------
def test_plain_reporter_lines() -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    reporter.stage("pull", "registry/app")
    reporter.stage("containerd")
    reporter.blob_started(LAYER, "layer", 2 * MIB, offset=MIB)
    reporter.blob_finished(LAYER)
    reporter.blob_finished(CONFIG, "present")
    reporter.steps_started("create", "soci create linux/amd64", total=3)
    reporter.step("create", "zTOC built for layer abababababab (2.0 MiB) -> 0123456789ab")
    reporter.step("create", "zTOC reused for layer cdcdcdcdcdcd (2.0 MiB) -> 0123456789ab")
    reporter.steps_finished("create", "1 built, 1 reused")
    reporter.steps_started("push", "soci push")
    reporter.step("push", "pushed 0123456789ab")
    reporter.steps_finished("push")
    reporter.warn("careful")
    lines = stream.getvalue().splitlines()
    expected = [
        r"==> pull: registry/app",
        r"==> containerd",
        r"    start  layer abababababab \(2\.0 MiB, resuming at 1\.0 MiB\)",
        r"    done   layer abababababab 2\.0 MiB in \d+\.\d s \(.+/s\)",
        r"    present  cdcdcdcdcdcd",
        r"    soci create linux/amd64 \(3 to go\)",
        r"    \[1/3\] zTOC built for layer abababababab \(2\.0 MiB\) -> 0123456789ab",
        r"    \[2/3\] zTOC reused for layer cdcdcdcdcdcd \(2\.0 MiB\) -> 0123456789ab",
        r"    soci create linux/amd64: 1 built, 1 reused in \d+\.\d s",
        r"    soci push",
        r"    \[1\] pushed 0123456789ab",
        r"    soci push: done in \d+\.\d s",
        r"warning: careful",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_quiet_reporter_prints_warnings_only() -> None:
    stream = io.StringIO()
    reporter = QuietReporter(stream)
    reporter.stage("pull", "registry/app")
    reporter.blob_started(LAYER, "layer", MIB)
    reporter.blob_finished(LAYER)
    reporter.steps_started("create", "soci create", total=1)
    reporter.step("create", "zTOC built")
    reporter.steps_finished("create", "1 built")
    reporter.warn("linux/arm64/v8: every layer is under --min-layer-size (1.0 MiB); no SOCI index")
    reporter.close()
    assert stream.getvalue() == (
        "warning: linux/arm64/v8: every layer is under --min-layer-size (1.0 MiB); no SOCI index\n"
    )

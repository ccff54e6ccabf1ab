"""The command line's value types: each turns an argument's text into its value, or raises
argparse.ArgumentTypeError with a message that says what is wrong and what to write instead."""

from __future__ import annotations

import argparse
import math
import re

from wrapper.core.errors import UsageError
from wrapper.core.models import Platform

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_MAX_SIZE = (1 << 63) - 1  # soci's size flags are int64
# containerd's rule for namespace names (identifiers.Validate).
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
_MAX_NAMESPACE_LENGTH = 76


def parse_size(text: str) -> int:
    """'10MiB', '10M', '4194304' -> bytes (K/M/G are binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use bytes or a number with KiB, MiB or GiB")
    unit = (m.group(2) or "b").lower()[0]
    size = int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    if size > _MAX_SIZE:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: too large (at most {_MAX_SIZE} bytes)")
    return size


def parse_seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use a positive number of seconds")
    return seconds


def parse_namespace(text: str) -> str:
    """A containerd namespace name: containerd refuses others, but only once it has been started."""
    if not _NAMESPACE_RE.match(text) or len(text) > _MAX_NAMESPACE_LENGTH:
        raise argparse.ArgumentTypeError(
            f"invalid namespace {text!r}: use letters and digits, separated by '.', '_' or '-' "
            f"(at most {_MAX_NAMESPACE_LENGTH} characters)"
        )
    return text


def parse_platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_override(text: str) -> tuple[str, str]:
    host, sep, addr = text.partition("=")
    if not sep or not host or not addr:
        raise argparse.ArgumentTypeError(f"invalid endpoint override {text!r}: use HOST=IP:PORT")
    return host, addr

"""The pinned versions of the programs soci-wrapper drives, read from ``pins.env`` (shared with bootstrap)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def pins() -> dict[str, str]:
    text = resources.files("wrapper").joinpath("pins.env").read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def pin(name: str) -> str:
    return pins()[name]


SOCI_VERSION = pin("SOCI_VERSION")
SOCI_COMMIT = pin("SOCI_COMMIT")

"""Which soci binary a run uses: found (``wrapper.system.binaries``: ``--soci-bin``, ``$SOCI_BIN``, this
Python's scripts directory, PATH), and checked before any network or daemon work: really soci, of the series
whose flags and output soci-wrapper knows."""

from __future__ import annotations

import re
import subprocess

from wrapper.core.errors import MissingDependencyError
from wrapper.core.pins import SOCI_VERSION
from wrapper.core.util import one_line
from wrapper.system.binaries import Lookup, find
from wrapper.system.supervisor import supervisor

SOCI_RELEASE = SOCI_VERSION  # the release scripts/bootstrap.sh builds (wrapper/pins.env)
# The releases whose flags and output soci-wrapper knows: major.minor of the pin.
SUPPORTED_SERIES = ".".join(SOCI_RELEASE.split(".")[:2])
_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)\S*")


def lookup_soci(explicit: str | None = None) -> Lookup:
    """Where soci is: ``--soci-bin``, then ``$SOCI_BIN``, then this Python's scripts directory, then PATH
    (``wrapper.system.binaries``); the lookup says where it looked."""
    return find("soci", explicit=explicit, flag="--soci-bin", env_var="SOCI_BIN")


def find_soci(explicit: str | None = None) -> str | None:
    """The soci binary's path (see ``lookup_soci``), or None."""
    return lookup_soci(explicit).path


def soci_version(binary: str) -> str:
    """``soci --version`` as ``v0.15.0 <revision>``-like text; raises MissingDependencyError."""
    try:
        done = supervisor().run([binary, "--version"], name="soci --version", timeout=30, check=True)
        out = done.stdout.strip()
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

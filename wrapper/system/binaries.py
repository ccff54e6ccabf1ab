"""The one way soci-wrapper finds a program it runs (soci, soci-snapshotter-grpc, containerd).

In this order:

1. the path given on the command line (``--soci-bin``): when it is given and is not usable, nothing else is
   tried (an explicit choice is never silently replaced); a bare name is looked up as below;
2. the environment variable (``SOCI_BIN``, ``SOCI_SNAPSHOTTER_BIN``);
3. the directory of this Python's scripts (``sysconfig.get_path("scripts")``: where pip and pipx put console
   scripts, ``.venv/bin`` for a virtual environment; scripts/bootstrap.sh links soci there);
4. ``PATH``.

Nothing is looked for relative to the package. A ``Lookup`` says where it looked, for messages and doctor.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Probe:
    """One place looked at: ``where`` (``--soci-bin``, ``$SOCI_BIN``, ``scripts``, ``PATH``), the path
    tried, and what was found there."""

    where: str
    path: str | None
    result: str  # "found", "missing", "not executable", "not set", "not on PATH"


@dataclass(frozen=True)
class Lookup:
    name: str
    path: str | None
    probes: tuple[Probe, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """Where it looked, on one line: ``--soci-bin /x (missing); $SOCI_BIN (not set); ...``."""
        parts = []
        for probe in self.probes:
            label = probe.where if probe.path is None else f"{probe.where} {probe.path}"
            parts.append(f"{label} ({probe.result})")
        return "; ".join(parts)


def _check(path: str) -> str:
    if not os.path.exists(path):
        return "missing"
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return "not executable"
    return "found"


def scripts_dir() -> str | None:
    """Where this interpreter's console scripts live (``.venv/bin``; a user or system bin directory)."""
    try:
        return sysconfig.get_path("scripts")
    except KeyError:
        return None


def find(
    name: str,
    *,
    explicit: str | None = None,
    flag: str | None = None,
    env_var: str | None = None,
    resolve: bool = True,
) -> Lookup:
    """Look for program ``name`` (see the module's docstring for the order). ``resolve``: the path found, with
    its symbolic links resolved (not for a program on PATH, which is given as PATH names it)."""
    probes: list[Probe] = []

    def found(path: str, where: str) -> Lookup:
        probes.append(Probe(where, path, "found"))
        return Lookup(name, str(Path(path).resolve()) if resolve else os.path.abspath(path), tuple(probes))

    if explicit and os.sep in explicit:
        result = _check(explicit)
        if result == "found":
            return found(explicit, flag or "given")
        probes.append(Probe(flag or "given", explicit, result))
        return Lookup(name, None, tuple(probes))
    if explicit:
        name = explicit  # a bare name: looked up where the program itself would be
    elif env_var:
        value = os.environ.get(env_var)
        if not value:
            probes.append(Probe(f"${env_var}", None, "not set"))
        elif (result := _check(value)) == "found":
            return found(value, f"${env_var}")
        else:
            probes.append(Probe(f"${env_var}", value, result))
    scripts = scripts_dir()
    if scripts:
        candidate = os.path.join(scripts, name)
        if (result := _check(candidate)) == "found":
            return found(candidate, "scripts")
        probes.append(Probe("scripts", candidate, result))
    on_path = shutil.which(name)
    if on_path is not None:
        probes.append(Probe("PATH", on_path, "found"))
        return Lookup(name, on_path, tuple(probes))
    probes.append(Probe("PATH", None, "not on PATH"))
    return Lookup(name, None, tuple(probes))


def find_program(
    name: str, *, explicit: str | None = None, env_var: str | None = None, resolve: bool = True
) -> str | None:
    """The full path of program ``name``, or None (``find`` says where it looked)."""
    return find(name, explicit=explicit, env_var=env_var, resolve=resolve).path

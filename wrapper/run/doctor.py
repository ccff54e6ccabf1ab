"""``soci-wrapper doctor``: what the tool would use, whether it works, and how to fix what does not."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from wrapper import __version__
from wrapper.containerd.client import ContainerdClient
from wrapper.containerd.daemon import containerd_binary_version
from wrapper.core.errors import WrapperError
from wrapper.soci.binary import SOCI_RELEASE, lookup_soci, soci_version
from wrapper.system.binaries import Lookup, find


@dataclass
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    version: str
    python: str
    platform: str
    root: bool
    containerd: dict[str, Any] = field(default_factory=dict)
    soci: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    # Where each program was looked for, in order (--flag, $VARIABLE, this Python's scripts directory, PATH).
    looked: dict[str, Lookup] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def run_doctor(
    *, containerd_address: str | None = None, containerd_bin: str = "containerd", soci_bin: str | None = None
) -> DoctorReport:
    is_root = os.geteuid() == 0
    report = DoctorReport(
        version=__version__,
        python=sys.version.split()[0],
        platform=f"{platform.system().lower()}/{platform.machine()}",
        root=is_root,
    )

    if containerd_address:
        info: dict[str, Any] = {"mode": "attach", "address": containerd_address, "usable": False}
        try:
            with ContainerdClient(containerd_address, timeout=5) as client:
                v = client.version.get()
            info.update(version=v.version, revision=v.revision, usable=True)
            report.checks.append(
                Check("containerd", True, True, f"attached at {containerd_address}: {v.version}")
            )
        except WrapperError as exc:
            report.checks.append(
                Check(
                    "containerd",
                    False,
                    True,
                    str(exc),
                    "check --containerd-address and that you may use the socket",
                )
            )
        report.containerd = info
    else:
        # As the run finds it (wrapper.containerd.daemon.find_containerd): the path as given, links kept.
        report.looked["containerd"] = find(
            "containerd", explicit=containerd_bin, flag="--containerd-bin", resolve=False
        )
        path = report.looked["containerd"].path
        info = {"mode": "managed", "binary": path, "version": None, "usable": False}
        if path is None:
            report.checks.append(
                Check(
                    "containerd",
                    False,
                    True,
                    f"{containerd_bin} not found",
                    "install containerd 1.6, 1.7 or 2.x (scripts/install.sh says how), or pass --containerd-bin",
                )
            )
        else:
            try:
                info["version"] = containerd_binary_version(path)
                info["usable"] = is_root
                report.checks.append(Check("containerd", True, True, f"{path} ({info['version']})"))
            except WrapperError as exc:
                report.checks.append(Check("containerd", False, True, str(exc), "reinstall containerd"))
        report.checks.append(
            Check(
                "root",
                is_root,
                True,
                "running as root" if is_root else "not root: a managed containerd needs root",
                ""
                if is_root
                else "run as root (a privileged CodeBuild stage), or attach with --containerd-address",
            )
        )
        report.containerd = info

    report.looked["soci"] = lookup_soci(soci_bin)
    soci_path = report.looked["soci"].path
    soci_info: dict[str, Any] = {
        "binary": soci_path,
        "version": None,
        "expected": SOCI_RELEASE,
        "usable": False,
    }
    if soci_path is None:
        report.checks.append(
            Check(
                "soci",
                False,
                True,
                "soci not found",
                "run scripts/install.sh (it installs soci's release), set SOCI_BIN or pass --soci-bin",
            )
        )
    else:
        try:
            ver = soci_version(soci_path)
            soci_info.update(version=ver, usable=True)
            pinned = SOCI_RELEASE in ver
            detail = f"{soci_path} ({ver})" + (
                "" if pinned else f"; soci-wrapper is tested with {SOCI_RELEASE}"
            )
            report.checks.append(Check("soci", True, True, detail))
        except WrapperError as exc:
            report.checks.append(Check("soci", False, True, str(exc), "rebuild it with scripts/bootstrap.sh"))
    report.soci = soci_info
    return report

"""The OCI runtime spec of a start-up container, written from the image's config. Pure logic.

The image is untrusted code, so the container gets what containerd's default spec gives (``oci/spec.go``:
namespaces, mounts, capabilities, masked and read-only paths, no new privileges, 1024 open files) and less:
no host mount at all (only kernel file systems and tmpfs), a network namespace of its own in which runc brings
up loopback and nothing else, and memory and process limits. Not privileged, no devices beyond runc's
defaults (null, zero, full, random, urandom, tty, ptmx).

What it runs is the image's: ``Entrypoint`` + ``Cmd`` (a command given on the command line replaces ``Cmd``,
as ``docker run IMAGE CMD...`` does), ``Env`` (``--env K=V`` replaces or adds), ``WorkingDir`` and ``User``
(resolved to numbers by ``resolve_user`` from the image's /etc/passwd and /etc/group).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wrapper.core.errors import UsageError

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MEMORY = 1 << 30
DEFAULT_PIDS = 1024
HOSTNAME = "startup"

# containerd's default set (oci/spec.go, defaultUnixCaps).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NAMESPACES = ("pid", "ipc", "uts", "mount", "network")


def _mount(destination: str, fstype: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": fstype, "source": source, "options": list(options)}


# Kernel file systems and tmpfs only: nothing of the host is bind-mounted in.
MOUNTS = (
    _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
    _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    _mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"),
    _mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
    _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
    _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
    _mount("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
)


@dataclass(frozen=True)
class User:
    """The numeric identity the process runs as."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = DEFAULT_MEMORY
    pids: int = DEFAULT_PIDS


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config (its ``config`` object) that say what a container runs."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ImageConfig:
        """From the image config JSON (the whole document; its ``config`` may be absent or null)."""
        config = document.get("config") or {}

        def strings(key: str) -> tuple[str, ...]:
            value = config.get(key) or ()
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return cls(
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            env=strings("Env"),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )


@dataclass(frozen=True)
class RunSettings:
    """What the command line adds: a command that replaces ``Cmd``, environment variables, limits."""

    command: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


def parse_env(items: Sequence[str]) -> tuple[str, ...]:
    """``--env K=V`` values, checked (``K`` non-empty, no NUL)."""
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key or "\0" in item:
            raise UsageError(f"--env {item!r} is not KEY=VALUE", hint="for example --env LOG_LEVEL=debug")
    return tuple(items)


def merge_env(image_env: Sequence[str], extra: Sequence[str], user: User) -> list[str]:
    """The image's environment, then ``extra`` (replacing the same keys); PATH and HOME when missing."""
    merged: dict[str, str] = {}
    for item in (*image_env, *extra):
        key, _, value = item.partition("=")
        merged[key] = value
    out = [f"{k}={v}" for k, v in merged.items()]
    if "PATH" not in merged:
        out.insert(0, DEFAULT_PATH)
    if "HOME" not in merged:
        out.append(f"HOME={user.home}")
    return out


def process_args(config: ImageConfig, command: Sequence[str] | None) -> list[str]:
    """Entrypoint followed by the command (``command`` replaces the image's Cmd)."""
    args = [*config.entrypoint, *(config.cmd if command is None else command)]
    if not args:
        raise UsageError(
            "the image has no Entrypoint or Cmd: nothing to run",
            hint="give the command after --, e.g. soci-wrapper startup IMAGE -- /bin/app --serve",
        )
    return args


def build_spec(
    config: ImageConfig, settings: RunSettings, user: User, *, cgroups_path: str, hostname: str = HOSTNAME
) -> dict[str, Any]:
    """The OCI runtime spec (a JSON document) of the container: root ``rootfs`` in its bundle."""
    caps = list(DEFAULT_CAPABILITIES)
    limits = settings.limits
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                **({"additionalGids": list(user.additional_gids)} if user.additional_gids else {}),
            },
            "args": process_args(config, settings.command),
            "env": merge_env(config.env, settings.env, user),
            "cwd": config.working_dir or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [dict(m, options=list(m["options"])) for m in MOUNTS],
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES],
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": limits.memory_bytes, "swap": limits.memory_bytes},
                "pids": {"limit": limits.pids},
            },
            "cgroupsPath": cgroups_path,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


# -- the image's user ---------------------------------------------------------------------------------------------
def _table(text: str, fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= fields and not line.startswith("#"):
            rows.append(parts)
    return rows


def needs_lookup(user: str) -> bool:
    """Whether ``user`` (the config's ``User``) names a user or group that only /etc/passwd or /etc/group
    can turn into numbers (an empty or all-numeric one also wants the passwd entry, but can do without)."""
    return any(part and not part.isdigit() for part in user.split(":", 1))


def _named(rows: list[list[str]], name: str, what: str, path: str, present: bool) -> list[str]:
    """The row of ``name`` in /etc/passwd or /etc/group (``rows``); UsageError when there is none."""
    row = next((r for r in rows if r[0] == name), None)
    if row is None or not row[2].isdigit():
        where = f"the image's {path}" if present else f"the image (it has no {path})"
        raise UsageError(f"the image's {what} {name!r} is not in {where}")
    return row


def resolve_user(user: str, passwd: str | None, group: str | None) -> User:
    """``User`` of the image config (``uid``, ``uid:gid``, ``name``, ``name:group``, ...) in numbers, from the
    image's /etc/passwd and /etc/group (None: the image has no such file). A name the files do not have is a
    UsageError. As Docker does: a user without a group gets its passwd entry's group (else 0), and the groups
    that list the user by name are added."""
    name, _, group_part = user.partition(":")
    users = _table(passwd or "", 7)
    groups = _table(group or "", 4)
    entry: list[str] | None
    if name and not name.isdigit():
        entry = _named(users, name, "user", "/etc/passwd", passwd is not None)
    else:
        entry = next((row for row in users if row[2] == (name or "0")), None)
    uid = int(entry[2]) if entry is not None else int(name or 0)
    if group_part.isdigit():
        gid = int(group_part)
    elif group_part:
        gid = int(_named(groups, group_part, "group", "/etc/group", group is not None)[2])
    else:
        gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    extra: tuple[int, ...] = ()
    if entry is not None:
        member_of = (int(row[2]) for row in groups if entry[0] in row[3].split(",") and row[2].isdigit())
        extra = tuple(sorted({g for g in member_of if g != gid}))
    home = entry[5] if entry is not None and entry[5] else "/"
    return User(uid, gid, extra, home)

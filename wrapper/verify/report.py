"""What ``soci-wrapper verify`` found: per platform and per layer, each check made (by level) and what failed.

The report is built up by the levels in turn (registry, content, consumer); ``--json`` carries it as it is.
Its verdict: ``valid`` (every checked platform's index passed every check run), ``no-index`` (a platform has
no SOCI index, and no index found is wrong) or ``invalid`` (an index exists but fails a check).

A check can hold and still carry a warning: a V1 index that loads lazily only once the snapshotter's config
enables v1 (``[pull_modes.soci_v1]``) is valid, and the user hears that a stock snapshotter ignores it. Warnings
never change the verdict or the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from wrapper.core.errors import ExitCode, NoSociIndexError, SociIndexInvalidError, WrapperError
from wrapper.core.progress import short_digest
from wrapper.soci.pullmodes import V1_NOTE

Level = Literal["registry", "content", "consumer"]
LEVELS: tuple[Level, ...] = ("registry", "content", "consumer")
DEFAULT_FILES_PER_LAYER = 6  # content level: files of each layer read through its zTOC and compared


@dataclass
class Check:
    """One thing checked: at which level, what (``name``), whether it held, and in plain words. ``warning``:
    it held, but what it found is worth telling (the detail says what); it is never a failure."""

    level: Level
    name: str
    ok: bool
    detail: str
    warning: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "check": self.name,
            "ok": self.ok,
            "warning": self.warning,
            "detail": self.detail,
        }


@dataclass
class LayerResult:
    """One layer of a platform's manifest: its zTOC (if the index has one) and what was checked."""

    digest: str
    size: int
    media_type: str
    ztoc: str | None = None
    ztoc_size: int | None = None
    span_size: int | None = None
    covered_reason: str = ""  # why the layer has no zTOC (when it has none)
    checks: list[Check] = field(default_factory=list)
    files_compared: int = 0  # content level: files read through the zTOC and compared with the tar stream
    bytes_compared: int = 0
    files_read_lazily: int = 0  # consumer level: files read through the snapshotter's FUSE mount
    lazy: bool | None = None  # consumer level: mounted lazily (a FUSE mount) or not; None: not run
    mountpoint: str | None = None

    @property
    def covered(self) -> bool:
        return self.ztoc is not None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, level: Level, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(level, name, ok, detail))
        return ok

    def passed(self, level: Level) -> bool:
        """Whether every check of ``level`` (and below) that was made held."""
        upto = LEVELS[: LEVELS.index(level) + 1]
        return all(c.ok for c in self.checks if c.level in upto)

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "media_type": self.media_type,
            "covered": self.covered,
            "ztoc": self.ztoc,
            "ztoc_size": self.ztoc_size,
            "span_size": self.span_size,
            "reason": None if self.covered else self.covered_reason,
            "ok": self.ok,
            "files_compared": self.files_compared,
            "bytes_compared": self.bytes_compared,
            "lazy": self.lazy,
            "files_read_lazily": self.files_read_lazily,
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass
class PlatformResult:
    """One platform of the image: its manifest, the SOCI index the consumer would use, and the checks."""

    platform: str
    manifest_digest: str
    manifest_media_type: str = ""
    manifest_size: int = 0
    soci_version: str | None = None  # V1 | V2, of the index found
    index_digest: str | None = None
    discovered_via: str | None = None  # "referrers API", "referrers tag sha256-…", "manifest annotation"
    checks: list[Check] = field(default_factory=list)
    layers: list[LayerResult] = field(default_factory=list)
    # Consumer level: fuse.rawBridge mounts under the snapshotter's root once the image was pulled.
    fuse_mounts: int | None = None
    # Consumer level: whether the snapshotter with its default pull modes mounted every indexed layer lazily
    # (V2: the pull the checks ran; V1: a pull before the checks, which ran with v1 enabled); None: not run.
    lazy_by_default: bool | None = None

    @property
    def found(self) -> bool:
        return self.index_digest is not None

    @property
    def ok(self) -> bool:
        return self.found and all(c.ok for c in self.checks) and all(x.ok for x in self.layers)

    def add(self, level: Level, name: str, ok: bool, detail: str, *, warning: bool = False) -> bool:
        self.checks.append(Check(level, name, ok, detail, warning))
        return ok

    def passed(self, level: Level) -> bool:
        upto = LEVELS[: LEVELS.index(level) + 1]
        return self.found and all(c.ok for c in self.checks if c.level in upto)

    def warnings(self) -> list[str]:
        """Each check's warning, as one line naming the platform. A V1 index the consumer level did not pull
        gets the snapshotter's documented default instead, said to be unchecked."""
        out = [f"{self.platform}: {c.detail}" for c in self.checks if c.warning]
        if out or not self.found or self.soci_version != "V1" or self.lazy_by_default is not None:
            return out
        return [f"{self.platform}: {V1_NOTE} (not seen here: the consumer level did not pull this platform)"]

    def layer(self, digest: str) -> LayerResult | None:
        return next((x for x in self.layers if x.digest == digest), None)

    def problems(self) -> list[str]:
        """Every failed check, as one line naming the platform (and the layer)."""
        out = [f"{self.platform}: {c.detail}" for c in self.checks if not c.ok]
        for layer in self.layers:
            out += [f"{self.platform}: layer {layer.digest}: {c.detail}" for c in layer.checks if not c.ok]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "manifest_digest": self.manifest_digest,
            "soci_version": self.soci_version,
            "soci_index_digest": self.index_digest,
            "discovered_via": self.discovered_via,
            "ok": self.ok,
            "fuse_mounts": self.fuse_mounts,
            "lazy_by_default": self.lazy_by_default,
            "layers_covered": sum(1 for x in self.layers if x.covered),
            "layers_not_covered": sum(1 for x in self.layers if not x.covered),
            "checks": [c.to_json() for c in self.checks],
            "layers": [x.to_json() for x in self.layers],
            "problems": self.problems(),
            "warnings": self.warnings(),
        }


@dataclass
class VerifyReport:
    image: str
    digest: str
    soci_version: str  # what was asked: V1, V2 or auto
    levels: dict[str, str] = field(default_factory=dict)  # level -> "run" or "not run: <reason>"
    platforms: list[PlatformResult] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> Literal["valid", "invalid", "no-index"]:
        if any(p.found and not p.ok for p in self.platforms):
            return "invalid"
        if not self.platforms or any(not p.found for p in self.platforms):
            return "no-index"
        return "valid"

    def error(self) -> WrapperError | None:
        """The verdict as the error the command ends with (exit 10 or 11), or None when every index is valid."""
        status = self.status
        if status == "valid":
            return None
        if status == "no-index":
            return NoSociIndexError(self.summary(), hint="build one with `soci-wrapper index`")
        return SociIndexInvalidError(self.summary(), hint="rebuild it with `soci-wrapper index --force`")

    @property
    def exit_code(self) -> int:
        error = self.error()
        return ExitCode.OK if error is None else error.exit_code

    def problems(self) -> list[str]:
        out: list[str] = []
        for p in self.platforms:
            out += p.problems()
        return out

    def warnings(self) -> list[str]:
        out: list[str] = []
        for p in self.platforms:
            out += p.warnings()
        return out

    def summary(self) -> str:
        """One line: the verdict and the first problem (or how many warnings a valid verdict has)."""
        if self.status == "valid":
            run = [lvl for lvl, state in self.levels.items() if state == "run"]
            warnings = len(self.warnings())
            noted = f", {warnings} warning{'s' if warnings > 1 else ''}" if warnings else ""
            return f"every SOCI index is valid ({', '.join(run)} checks{noted})"
        problems = self.problems()
        more = (
            f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
            if len(problems) > 1
            else ""
        )
        what = "no SOCI index" if self.status == "no-index" else "invalid SOCI index"
        return f"{what}: {problems[0] if problems else 'no platform checked'}{more}"

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "soci_version": self.soci_version,
            "status": self.status,
            "exit_code": self.exit_code,
            "levels": dict(self.levels),
            "platforms": [p.to_json() for p in self.platforms],
            "problems": self.problems(),
            "warnings": self.warnings(),
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
        }


def layer_label(layer: LayerResult) -> str:
    return short_digest(layer.digest)

"""The package's shape (README, Layout): imports run only down the stage, and no module grows past ~500 lines
without saying why in its docstring. Reads the source; imports nothing of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wrapper"

# Highest first. A module may import its own folder and any folder of a lower rank, never one of the same rank
# or higher (registry/ and containerd/ are boundary clients side by side: neither imports the other).
RANK = {
    "api": 9,
    "cli": 8,
    "verify": 7,
    "run": 6,
    "startup": 6,
    "soci": 5,
    "image": 4,
    "registry": 3,
    "containerd": 3,
    "system": 2,
    "core": 1,
}
LONG_MODULE_LINES = 520
LONG_MODULE_REASON = "Long on purpose:"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts)


def _folder(module: str) -> str | None:
    """``wrapper.soci.runner`` -> ``soci``; ``wrapper.api`` -> ``api``; ``wrapper`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "wrapper" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found if name == "wrapper" or name.startswith("wrapper.")]


def upward_imports(paths: list[Path], package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in paths:
        mine = _folder(".".join(path.relative_to(package.parent).with_suffix("").parts))
        if mine is None or mine.startswith("__"):
            continue
        for line, target in _imports(path):
            theirs = _folder(target)
            if theirs is None or theirs == mine or theirs.startswith("__"):
                continue
            if theirs not in RANK or mine not in RANK:
                problems.append(
                    f"{path.relative_to(package.parent)}:{line}: {target} (folder not in the map)"
                )
            elif RANK[theirs] >= RANK[mine]:
                problems.append(f"{path.relative_to(package.parent)}:{line}: {mine} imports {target}")
    return problems


def test_imports_run_only_down_the_stage() -> None:
    assert upward_imports(_modules()) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "wrapper"
    (package / "core").mkdir(parents=True)
    (package / "image").mkdir()
    low = package / "core" / "low.py"
    low.write_text("from wrapper.core.errors import UsageError\nfrom wrapper.image.pull import Puller\n")
    high = package / "image" / "high.py"
    high.write_text("import wrapper.core.models\nfrom wrapper.image import resolve\n")
    assert upward_imports([low, high], package) == ["wrapper/core/low.py:2: core imports wrapper.image.pull"]


def test_every_folder_of_the_package_is_on_the_map() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.name.startswith("__")}
    assert (folders | modules) - set(RANK) - {"pins"} == set()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines <= LONG_MODULE_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert LONG_MODULE_REASON in doc, f"{lines} lines and no '{LONG_MODULE_REASON} ...' in its docstring"

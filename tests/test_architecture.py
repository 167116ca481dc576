"""The import rules of docs/ARCHITECTURE.md, enforced: the "may import" column of its package
table is the one statement of who may import what, and this test reads it from there.

A token in that column is either a package of the table (`smx`, `trusted.core`: the modules of
that row, not of the rows below it) or a module prefix (`trusted.core.config`, `grpc`). A module
may always import the standard library and its own package (an extension only itself, never
another extension).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
FIRST_PARTY = ("smx", "trusted", "extensions", "untrusted", "examples")
EVERY_EXTENSION = "extensions/<name>"


@dataclass(frozen=True)
class Row:
    path: str  # "trusted/core", "extensions/<name>"
    allowed: tuple[str, ...] | None  # None: anything

    @property
    def module(self) -> str:
        return self.path.replace("/", ".")


def _rows() -> list[Row]:
    rows = []
    section = ARCHITECTURE.read_text().split("## Packages", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        path = cells[0].strip("`").rstrip("/")
        may = cells[2]
        allowed = None if may.startswith("anything") else tuple(re.findall(r"`([^`]+)`", may))
        rows.append(Row(path, allowed))
    return rows


ROWS = _rows()
ROW_MODULES = {r.module: r for r in ROWS if r.path != EVERY_EXTENSION}


def _row_of(rel: str) -> Row | None:
    """The most specific row a file belongs to."""
    best = None
    for row in ROWS:
        prefix = row.path + "/"
        if row.path == EVERY_EXTENSION:
            if rel.startswith("extensions/") and rel.count("/") >= 2:
                best = best or row
            continue
        if rel.startswith(prefix) and (best is None or len(row.path) > len(best.path)):
            best = row
    return best


def _owner_module(module: str) -> str:
    """The row (as a module name) an imported first-party module belongs to."""
    best = ""
    for name in ROW_MODULES:
        if (module == name or module.startswith(name + ".")) and len(name) > len(best):
            best = name
    if not best and module.startswith("extensions."):
        return ".".join(module.split(".")[:2])  # one extension
    return best


def _own_package(rel: str, row: Row) -> str:
    if row.path == EVERY_EXTENSION:
        return ".".join(rel.split("/")[:2])
    return row.module


def _permitted(module: str, row: Row, own: str) -> bool:
    assert row.allowed is not None
    owner = _owner_module(module)
    if owner == own:
        return True
    for token in row.allowed:
        if token in ROW_MODULES:
            if owner == token:
                return True
        elif module == token or module.startswith(token + "."):
            return True
    return False


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FIRST_PARTY:
                # `from smx import names` imports the module smx.names
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return [(n, m) for n, m in out if m.split(".")[0] not in sys.stdlib_module_names]


def _product_files() -> list[tuple[str, Path]]:
    files = []
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == f"{top}/__init__.py" and not _imports(path):
                continue  # the marker of a namespace made of the rows below it
            files.append((rel, path))
    return files


def _resolve(module: str) -> str:
    """`from smx import names` names a module; `from smx.names import Glob` names a symbol:
    keep the longest prefix that is a first-party module or package."""
    parts = module.split(".")
    while len(parts) > 1:
        base = ROOT.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            break
        parts.pop()
    return ".".join(parts)


def test_the_table_covers_every_product_package() -> None:
    assert {"smx", "smx/sdk", "trusted/core", EVERY_EXTENSION, "untrusted"} <= {
        r.path for r in ROWS
    }
    lost = [rel for rel, _ in _product_files() if _row_of(rel) is None]
    assert not lost, f"files in no row of the ARCHITECTURE.md package table: {lost}"


def test_every_import_is_one_the_table_allows() -> None:
    wrong = []
    for rel, path in _product_files():
        row = _row_of(rel)
        if row is None or row.allowed is None:
            continue
        own = _own_package(rel, row)
        for line, module in _imports(path):
            if module.split(".")[0] in FIRST_PARTY:
                module = _resolve(module)
            if not _permitted(module, row, own):
                wrong.append(
                    f"{rel}:{line} imports {module} ({row.path}/ may import: "
                    f"{', '.join(row.allowed) or 'nothing'})"
                )
    assert not wrong, "\n".join(wrong)


def test_what_the_product_imports_is_a_declared_run_time_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in project["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    missing = set()
    for rel, path in _product_files():
        for _, module in _imports(path):
            top = module.split(".")[0]
            if top in FIRST_PARTY:
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
            if not dists & declared:
                missing.add(f"{top} (in {rel}; from {sorted(dists)})")
    assert not missing, f"imported but not in [project] dependencies: {sorted(missing)}"


@pytest.mark.parametrize(
    ("module", "importer", "expected"),
    [
        ("trusted.core.realtime", "smx/names.py", False),
        ("smx.sdk", "smx/names.py", False),
        ("smx.names", "smx/sdk/client.py", True),
        ("extensions.smm.obis", "extensions/fronius/points.py", False),
        ("extensions.fronius.points", "extensions/fronius/control.py", True),
        ("trusted.core.config", "trusted/supervisor/runner.py", True),
        ("trusted.core.realtime", "trusted/supervisor/runner.py", False),
        ("cryptography", "trusted/supervisor/runner.py", False),
    ],
)
def test_the_rule_reads_the_table_as_documented(module: str, importer: str, expected: bool) -> None:
    row = _row_of(importer)
    assert row is not None and row.allowed is not None
    assert _permitted(module, row, _own_package(importer, row)) is expected

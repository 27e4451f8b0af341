"""tune/'s layers (docs/architecture.md): a module imports only from its own package or from a layer
below it, and the files-only readers import neither Ray nor the trainer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.files import REPO

LAYERS = {
    "tune._internals": 0,
    "tune.settings": 0,
    "tune.record": 1,
    "tune.export": 2,
    "tune.extras": 2,
    "tune.report": 3,
    "tune.search": 4,
    "tune.run": 5,
    "tune": 5,  # tune/__init__.py, the public surface
}
"""Lowest first: the record of a run knows nothing of how it is searched or read; export and the
extras stand on the record alone; the report reads the export; the search drives all of them."""


def layer_of(module: str) -> str:
    """The entry of LAYERS that `module` (a dotted name under tune) belongs to."""
    return max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tune_imports(path: Path) -> set[str]:
    """Every tune module `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tune":
            found |= {f"{node.module}.{a.name}" if node.module == "tune" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tune"}
    return found


def tune_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((REPO / "tune").rglob("*.py"))}


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """What the `modules` (dotted name: file) import from a layer not below their own."""
    out = []
    for importer, path in modules.items():
        mine = layer_of(importer)
        for imported in sorted(tune_imports(path)):
            theirs = layer_of(imported)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                out.append(f"{importer} imports {imported} ({theirs} is not below {mine})")
    return out


def test_every_module_of_tune_has_a_layer():
    # A new package must be placed in LAYERS (and in docs/architecture.md) before it is used.
    packages = {module_name(p) for p in (REPO / "tune").glob("*/__init__.py")}
    modules = {module_name(p) for p in (REPO / "tune").glob("*.py")}
    assert packages | modules <= set(LAYERS) | {"tune.__main__"}


def test_no_module_of_tune_imports_from_a_layer_above_its_own():
    assert upward_imports(tune_modules()) == []


def test_the_layer_check_sees_an_upward_import_inside_a_function(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("from tune.record.keys import EPOCH\n\ndef f():\n    from tune.export import best\n")
    assert upward_imports({"tune.record.bad": bad}) == [
        "tune.record.bad imports tune.export (tune.export is not below tune.record)"
    ]
    # The same import is allowed one layer up, and between two packages of one layer it is not.
    assert upward_imports({"tune.report.bad": bad}) == []
    assert upward_imports({"tune.extras.bad": bad}) == [
        "tune.extras.bad imports tune.export (tune.export is not below tune.extras)"
    ]


@pytest.mark.parametrize(
    "module",
    [
        "tune.record.results",
        "tune.record.study",
        "tune.export.summary",
        "tune.export.confirmation",
        "tune.report.page",
    ],
)
def test_the_files_only_readers_import_neither_ray_nor_the_trainer(module: str):
    code = f"import sys, {module}; print(sorted(m for m in ('ray', 'mf.training') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

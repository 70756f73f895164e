"""The architecture's rules, checked on the source (ast), so a change that breaks one fails here:
no import cycles, short files, one importer of the native extension, one module that renames
files into place, and a CLI whose help and validate load none of the heavy libraries."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package name it installs as (kernels/ installs as car_engine.kernels).
PACKAGES = {ROOT / "car_engine": "car_engine", ROOT / "kernels": "car_engine.kernels",
            ROOT / "benchmarks": "car_engine.benchmarks"}
MAX_LINES = 400
HEAVY = ("torch", "faiss", "onnxruntime", "transformers")


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The car_engine modules ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("car_engine")}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports_of(name, path) if m in mods and m != name}
            for name, path in mods.items()}


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ may re-export its own submodules; a cycle through that is the
    # package importing itself, not two layers that depend on each other.
    edges = {a: {b for b in deps if not a.startswith(b + ".")} for a, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_files_are_short():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_only_native_py_imports_the_extension():
    users = {name for name, path in modules().items()
             if "car_engine._native" in imports_of(name, path)}
    assert users == {"car_engine.native"}


def _renames(path: Path) -> list[int]:
    """Lines that rename a file: os.replace/os.rename/shutil.move, or Path.rename/replace
    (one argument; str.replace takes two)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        module = owner.id if isinstance(owner, ast.Name) else ""
        attr = node.func.attr
        if (module == "os" and attr in ("replace", "rename")) or (module, attr) == ("shutil",
                                                                                  "move"):
            lines.append(node.lineno)
        elif attr in ("replace", "rename") and len(node.args) == 1 and module not in ("os",):
            lines.append(node.lineno)
    return lines


def test_only_io_py_renames_files_into_place():
    renaming = {name: lines for name, path in modules().items()
                if (lines := _renames(path)) and name != "car_engine.io"}
    assert not renaming, f"files renamed into place outside car_engine/io.py: {renaming}"
    assert _renames(ROOT / "car_engine" / "io.py")  # and io.py does


PROBE = """
import json, sys
from car_engine.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
heavy = sorted(m for m in {heavy} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["validate", "builtin:sharegpt", "--limit", "50"],
                                  ["run", "--help"], ["select", "--help"]])
def test_help_and_validate_import_no_heavy_library(argv):
    probe = PROBE.format(heavy=repr(HEAVY))
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr[-2000:]
    assert result["heavy"] == [], f"{' '.join(argv)} imported {result['heavy']}"


def test_public_api_names_resolve():
    import car_engine as ce

    for name in ce.__all__:
        assert getattr(ce, name) is not None, name
    lazy = ce.__dict__["_LAZY"]
    # The TYPE_CHECKING re-exports and the run-time table name the same things.
    tree = ast.parse((ROOT / "car_engine" / "__init__.py").read_text())
    typed = {alias.asname or alias.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module != "__future__"
             and node.module and node.module.startswith("car_engine.")
             and node.module != "car_engine.omp" for alias in node.names}
    assert typed == set(lazy)

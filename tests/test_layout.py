"""The package's layout holds: imports flow one way (no circle, imports inside functions
included), the spec needs NumPy alone, no library module imports the command line, and the
teaching engine stays small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "minisage"
ENGINE_BUDGET = 600  # lines of minisage/autograd/ + minisage/functional.py


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every minisage module ``name`` imports, anywhere in its file (functions included). A
    ``from package import x`` is the submodule ``package.x`` when there is one, else the package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minisage"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            if base.split(".")[0] != "minisage":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_circle():
    """Depth-first search for a back edge; a circle is reported as the modules on it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_spec_needs_numpy_alone():
    for name, path in MODULES.items():
        if name.startswith("minisage.spec"):
            assert reachable(name) <= {m for m in MODULES if m.startswith("minisage.spec")}, name
            tree = ast.parse(path.read_text())
            third_party = {a.name.split(".")[0] for n in ast.walk(tree)
                           if isinstance(n, ast.Import) for a in n.names}
            third_party |= {n.module.split(".")[0] for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and n.module and not n.level}
            assert third_party <= {"numpy", "minisage", "__future__", "math", "numbers",
                                   "collections", "typing", "dataclasses", "zlib",
                                   "warnings"}, (name, third_party)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("minisage.cli")
                                        and n != "minisage.__main__"))
def test_no_library_module_imports_the_command_line(name):
    assert not any(m.startswith("minisage.cli") for m in reachable(name)), name


def test_the_engine_never_imports_the_fast_path_or_above():
    for name in ("minisage.autograd", "minisage.autograd.tensor", "minisage.functional"):
        assert reachable(name) <= {"minisage.autograd", "minisage.autograd.tensor"}, name


def test_the_teaching_engine_reads_in_one_sitting():
    files = [*sorted((ROOT / "autograd").glob("*.py")), ROOT / "functional.py"]
    lines = sum(len(f.read_text().splitlines()) for f in files)
    assert lines <= ENGINE_BUDGET, f"the engine has {lines} lines, over {ENGINE_BUDGET}"

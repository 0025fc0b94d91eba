"""The package's import structure, as STYLE.md draws it. What this enforces, and nothing more:

- no import cycle between debiaspl modules, counting imports inside functions too and the package
  __init__ files an import runs;
- algorithm/ imports only torch, the standard library and the leaf debiaspl.options;
- options.py, files.py and errors.py are leaves (they import no other debiaspl module);
- the forbidden directions below (e.g. analysis/ never imports engine/, hooks/ never models/);
- no module is longer than 400 lines.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "debiaspl"
STANDARD_LIBRARY_FOR_ALGORITHMS = {"__future__", "dataclasses", "difflib", "math", "typing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[str]:
    """Every module an import statement anywhere in the file names (a `from X import name` names
    X.name too when that is a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES]
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the debiaspl modules importing it runs: each target, and the package __init__s above
    a target that are not the importer's own (those already run when the importer does)."""
    graph = {}
    for name, path in MODULES.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        targets = set()
        for target in imports_of(path):
            if target not in MODULES:
                continue
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} - own
        graph[name] = targets - {name}
    return graph


def test_no_import_cycles():
    graph, state, stack = import_graph(), {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_algorithm_imports_only_torch_and_leaves():
    for name, path in MODULES.items():
        if not name.startswith("debiaspl.algorithm"):
            continue
        for module in imports_of(path):
            root = module.split(".")[0]
            assert (root == "torch" or root in STANDARD_LIBRARY_FOR_ALGORITHMS or module.startswith("debiaspl.algorithm")
                    or module == "debiaspl.options"), (name, module)


@pytest.mark.parametrize("leaf", ["debiaspl.options", "debiaspl.files", "debiaspl.errors"])
def test_leaf_modules_import_no_other_debiaspl_module(leaf):
    assert not [module for module in imports_of(MODULES[leaf]) if module.startswith("debiaspl")]


@pytest.mark.parametrize("folder, forbidden", [
    ("analysis", ("debiaspl.engine", "debiaspl.cli")),
    ("data", ("debiaspl.engine", "debiaspl.cli", "debiaspl.models", "debiaspl.algorithm")),
    ("models", ("debiaspl.engine", "debiaspl.cli", "debiaspl.data", "debiaspl.algorithm")),
    # hooks see their records, the pure metrics and the file writers
    ("hooks", ("debiaspl.engine", "debiaspl.cli", "debiaspl.models", "debiaspl.analysis", "debiaspl.config",
               "debiaspl.run_folder")),
    ("metrics", ("debiaspl.engine", "debiaspl.cli", "debiaspl.analysis", "debiaspl.hooks", "debiaspl.config",
                 "debiaspl.run_folder")),
])
def test_forbidden_imports(folder, forbidden):
    for name, path in MODULES.items():
        if name.startswith(f"debiaspl.{folder}"):
            for module in imports_of(path):
                assert not module.startswith(forbidden), (name, module)


def test_no_module_is_too_long():
    for path in MODULES.values():
        assert len(path.read_text().splitlines()) <= 400, path

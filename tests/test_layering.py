"""The import direction of the package: algorithm <- engine <- cli; data, models, analysis stand alone."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "debiaspl"


def imported_modules(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path.name, node.module))
    return found


def test_algorithm_imports_only_torch():
    for filename, module in imported_modules(PACKAGE / "algorithm"):
        root = module.split(".")[0]
        assert root in {"torch", "typing", "math", "__future__"} or module.startswith("debiaspl.algorithm"), \
            (filename, module)


@pytest.mark.parametrize("folder, forbidden", [
    ("analysis", ("debiaspl.engine", "debiaspl.cli")),
    ("data", ("debiaspl.engine", "debiaspl.cli", "debiaspl.models", "debiaspl.algorithm")),
    ("models", ("debiaspl.engine", "debiaspl.cli", "debiaspl.data", "debiaspl.algorithm")),
    ("hooks", ("debiaspl.engine", "debiaspl.cli", "debiaspl.models")),  # hooks see only their records
])
def test_forbidden_imports(folder, forbidden):
    for filename, module in imported_modules(PACKAGE / folder):
        assert not module.startswith(forbidden), (folder, filename, module)


def test_no_module_is_too_long():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path

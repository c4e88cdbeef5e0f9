"""Imports only point down the project's layers: eval, launch -> semcoder_jax -> data_pipeline -> sandbox.

``sandbox`` imports nothing of the project, so eval, the data builder and rewards can all stand on it.
(The ``semcoder`` dispatcher names its subcommand modules as strings to import on demand; that registry
is the application's top, not an import of the library.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"sandbox": 0, "data_pipeline": 1, "semcoder_jax": 2, "eval": 3, "launch": 3}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_points_up_or_sideways(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for target in imported_packages(path) - {package}:
            if LAYERS[target] >= LAYERS[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {target}")
    assert wrong == []


def test_no_script_shadows_a_package_of_the_project():
    """``python benchmarks/x.py`` puts benchmarks/ first on sys.path: a script named like a package would be
    imported in its place (and break every benchmark that imports the library)."""
    scripts = {path.stem for folder in ("benchmarks", "launch", "scripts") if (REPO / folder).is_dir()
               for path in (REPO / folder).glob("*.py")}
    assert scripts & set(LAYERS) == set()

"""Imports run one way, down the layers: read from the source (every import statement,
at module level or inside a function, since a lazy import is a cycle all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "django_tasks_live"

# module -> modules of the package it must never import (directly).
NEVER = {
    "engines": {"*"},
    "arguments": {"registry", "api", "models", "store", "executors"},
    "registry": {"api", "models", "store", "executors", "runner"},
    "models": {"api", "store", "views", "admin"},
    "states": {"*"},
    "cron": {"*"},
    "jsonvalues": {"*"},
    "uniqueness": {"*"},
    "limits": {"registry", "api", "models", "store", "admission"},
}


def package_imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports (first component below the package)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "django_tasks_live."):
            found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("module", sorted(NEVER))
def test_lower_layers_import_nothing_above_them(module):
    imported = package_imports(module)
    forbidden = NEVER[module]
    bad = imported if "*" in forbidden else imported & forbidden
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_reader_sees_lazy_imports_too():
    assert "arguments" in package_imports("registry")
    assert {"jsonvalues", "queues", "registry"} <= package_imports("models")

"""Imports point one way: web -> areas -> infrastructure.

Read from the source with ``ast`` (nothing is imported), so a layering mistake fails here with
the file and line, not later as an import cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
# The composition root builds the web app with everything else, so it sits above the web layer.
COMPOSITION_ROOT = {GATEWAY / "serve.py"}


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every module name an import statement names, with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _is_web(name: str) -> bool:
    return name == "gateway.web" or name.startswith("gateway.web.")


def test_nothing_below_the_web_layer_imports_it() -> None:
    web = GATEWAY / "web"
    offenders = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if web in path.parents or path in COMPOSITION_ROOT:
            continue
        for line, name in _imported(ast.parse(path.read_text(), str(path))):
            if _is_web(name):
                offenders.append(f"{path.relative_to(GATEWAY.parent)}:{line} imports {name}")
    assert offenders == []


def test_the_staff_pages_leave_queries_to_the_care_team_area() -> None:
    path = GATEWAY / "web" / "staff.py"
    selects = [
        f"line {line}"
        for line, name in _imported(ast.parse(path.read_text(), str(path)))
        if name.startswith("sqlalchemy") and name.rpartition(".")[2] == "select"
    ]
    assert selects == []


def test_the_check_sees_an_import_of_the_web_layer() -> None:
    tree = ast.parse(
        "from gateway.web import sessions\nimport gateway.web.app\nfrom gateway import web\n"
    )
    assert {line for line, name in _imported(tree) if _is_web(name)} == {1, 2, 3}

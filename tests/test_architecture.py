"""The layout is the architecture: checked from the import graph, so it cannot drift.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle
hidden in a function is still a cycle a reader has to hold in their head.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "handlers")
AREAS = {"admin", "careteam", "inbound", "outbound", "portal", "web"}
# gateway/ top level: infrastructure the areas share, and the composition root that wires
# the areas together (cli, serve, scheduler).
INFRASTRUCTURE = {
    "__init__",
    "__main__",
    "addresses",
    "audit",
    "cli",
    "clitools",
    "config",
    "crypto",
    "db",
    "dns",
    "errors",
    "groupcommit",
    "i18n",
    "keys",
    "logs",
    "metrics",
    "passwords",
    "scheduler",
    "serve",
    "services",
    "templating",
    "throttle",
    "tokens",
    "turns",
}
SUBPACKAGES = AREAS | {"models", "migrations"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "a.b.c" imports a.b.c, or its package a.b when c is a name inside it
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_in_function_imports() -> None:
    # The check below is only as good as the graph: a known in-function import must show.
    graph = _graph()
    assert "gateway.services" in graph["gateway.serve"]
    assert any(m.startswith("gateway.") for m in graph["handlers.reply"])


def test_no_import_cycles_among_gateway_and_handlers() -> None:
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_gateway_never_imports_handlers() -> None:
    offenders = {
        (name, target)
        for name, targets in _graph().items()
        if name.startswith("gateway")
        for target in targets
        if target == "handlers" or target.startswith("handlers.")
    }
    assert offenders == set()


def test_web_is_imported_only_by_the_web_and_the_composition_root() -> None:
    allowed = {"gateway.serve"}
    offenders = {
        (name, target)
        for name, targets in _graph().items()
        if not name.startswith("gateway.web") and name not in allowed
        for target in targets
        if target.startswith("gateway.web")
    }
    assert offenders == set()


def test_gateway_top_level_is_infrastructure_and_areas() -> None:
    files = {p.stem for p in (ROOT / "gateway").glob("*.py")}
    folders = {p.name for p in (ROOT / "gateway").iterdir() if (p / "__init__.py").exists()}
    assert files == INFRASTRUCTURE
    assert folders == SUBPACKAGES


def test_every_area_has_a_test_folder() -> None:
    missing = {a for a in AREAS if not (ROOT / "tests" / a / "__init__.py").exists()}
    assert missing == set()

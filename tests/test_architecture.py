"""The layout is the architecture, checked from the import graph so it cannot drift:
no cycles, gateway/ never imports the handlers plug-ins, imports point one way
(web -> areas -> infrastructure), and gateway/'s top level holds only infrastructure."""

from __future__ import annotations

from tests.support.imports import ROOT, cycles, graph, imports_of

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
    "executors",
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
# The composition root builds the web app with everything else, so it sits above the web.
COMPOSITION_ROOT = {"gateway.serve"}


def test_the_graph_sees_in_function_and_relative_imports() -> None:
    edges = graph()
    assert "gateway.services" in edges["gateway.serve"]
    assert any(m.startswith("gateway.") for m in edges["handlers.reply"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_gateway_and_handlers() -> None:
    assert cycles(graph()) == []


def test_gateway_never_imports_handlers() -> None:
    offenders = {
        (name, target)
        for name, targets in graph().items()
        if name.startswith("gateway")
        for target in targets
        if target == "handlers" or target.startswith("handlers.")
    }
    assert offenders == set()


def test_nothing_below_the_web_layer_imports_it() -> None:
    offenders = {
        (name, target)
        for name, targets in graph().items()
        if not name.startswith("gateway.web") and name not in COMPOSITION_ROOT
        for target in targets
        if target.startswith("gateway.web")
    }
    assert offenders == set()


def test_the_staff_pages_leave_queries_to_the_care_team_area() -> None:
    selects = {
        line
        for line, name in imports_of(ROOT / "gateway" / "web" / "staff.py")
        if name.startswith("sqlalchemy") and name.rpartition(".")[2] == "select"
    }
    assert selects == set()


def test_gateway_top_level_is_infrastructure_and_areas() -> None:
    gateway = ROOT / "gateway"
    files = {p.stem for p in gateway.glob("*.py")}
    folders = {p.name for p in gateway.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == INFRASTRUCTURE
    assert folders == AREAS | {"models", "migrations"}


def test_every_area_has_a_test_folder() -> None:
    missing = {a for a in AREAS if not (ROOT / "tests" / a / "__init__.py").exists()}
    assert missing == set()

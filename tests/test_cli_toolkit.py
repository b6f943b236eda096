"""The command line's shape: one toolkit, area CLIs built on it, a root that only mounts them.

Read from the source with :mod:`ast` (every import counts, in a function or not), so a
shortcut back into the root, or a second private copy of the toolkit, fails here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer

from gateway import cli as root_cli
from gateway.admin import cli as admin_cli
from gateway.careteam import cli as careteam_cli
from gateway.inbound import cli as inbound_cli
from gateway.outbound import cli as outbound_cli
from gateway.portal import cli as portal_cli
from tests.support.imports import ROOT, cycles, module_name
from tests.support.imports import imports_of as support_imports_of

GATEWAY = ROOT / "gateway"
AREA_CLIS = sorted(GATEWAY.glob("*/cli.py"))
AREAS = ("admin", "careteam", "inbound", "outbound", "portal", "web")
# What the toolkit provides; an area that defines one of these has its own copy again.
TOOLKIT_NAMES = {"JsonOpt", "_run", "_emit", "run_with_services", "emit", "get_config"}


def imports_of(path: Path) -> set[str]:
    return {name for _, name in support_imports_of(path)}


def test_the_area_clis_are_the_ones_this_file_knows() -> None:
    assert [module_name(p) for p in AREA_CLIS] == [
        "gateway.admin.cli",
        "gateway.careteam.cli",
        "gateway.inbound.cli",
        "gateway.outbound.cli",
        "gateway.portal.cli",
    ]


def test_nothing_under_gateway_imports_the_root_cli() -> None:
    # ``python -m gateway`` runs the command line: the entry point is the one importer.
    entry_points = {GATEWAY / "cli.py", GATEWAY / "__main__.py"}
    offenders = [
        module_name(path)
        for path in sorted(GATEWAY.rglob("*.py"))
        if path not in entry_points and "gateway.cli" in imports_of(path)
    ]
    assert offenders == []


@pytest.mark.parametrize("path", AREA_CLIS, ids=lambda p: p.parent.name)
def test_an_area_cli_is_built_on_the_toolkit(path: Path) -> None:
    assert "gateway.clitools" in imports_of(path)
    tree = ast.parse(path.read_text(), str(path))
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    assert defined & TOOLKIT_NAMES == set()


@pytest.mark.parametrize("path", AREA_CLIS, ids=lambda p: p.parent.name)
def test_an_area_cli_imports_no_other_area_cli(path: Path) -> None:
    others = {module_name(p) for p in AREA_CLIS} - {module_name(path)}
    assert imports_of(path) & others == set()


def test_the_toolkit_imports_no_area() -> None:
    imported = imports_of(GATEWAY / "clitools.py")
    areas = {m for m in imported for area in AREAS if m.startswith(f"gateway.{area}")}
    assert areas == set()
    assert "gateway.cli" not in imported


def test_the_cli_modules_import_one_another_without_a_cycle() -> None:
    paths = [GATEWAY / "cli.py", GATEWAY / "clitools.py", *AREA_CLIS]
    names = {module_name(p) for p in paths}
    assert cycles({module_name(p): imports_of(p) & names for p in paths}) == []


def test_the_root_mounts_every_area_app_and_only_those_besides_its_own() -> None:
    mounted = [group.typer_instance for group in root_cli.app.registered_groups]
    area_apps = [
        *admin_cli.APPS,
        *careteam_cli.APPS,
        *inbound_cli.APPS,
        *outbound_cli.APPS,
        *portal_cli.APPS,
    ]
    own = [root_cli.db_app, root_cli.keys_app, root_cli.audit_app]
    assert sorted(map(id, mounted)) == sorted(map(id, [*own, *area_apps]))
    # Each app carries its command name, so the area (not the root) names its commands.
    assert all(isinstance(a, typer.Typer) and a.info.name for a in mounted)

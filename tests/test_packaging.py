"""The wheel carries what an installed node needs, and the installed layout is what is used.

Installed from the wheel (as docs/operations.md tells operators to), carebridge has no checkout
beside it: pages, emails, the stylesheet and the Spanish catalogues must be package data, the
migrations must ship, and the routing table's entry point and the console script must survive.
``scripts/wheel-smoke`` proves the same end to end in a fresh virtualenv; this is the quick check.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # No build isolation: the backend (hatchling) is in the test extras, so this runs offline.
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(out), str(REPO)),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("carebridge-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _tracked(folder: str) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", folder], cwd=REPO, check=True, capture_output=True, text=True
    )
    return listed.stdout.split()


def test_every_template_static_file_and_catalogue_is_package_data(names: set[str]) -> None:
    for required in (
        "gateway/templates/email/base.html.j2",
        "gateway/templates/email/patient/registration-invitation.txt.j2",
        "gateway/templates/email/staff/staff-digest.html.j2",
        "gateway/templates/web/base.html.j2",
        "gateway/templates/web/static/carebridge.css",
        "gateway/templates/locale/es/email.po",
        "gateway/templates/locale/es/portal.po",
    ):
        assert required in names, required
    # Everything under the checkout's templates/, nothing left behind.
    tracked = _tracked("templates")
    assert len(tracked) > 50
    missing = [p for p in tracked if "gateway/" + p not in names]
    assert not missing, missing
    # The source tree's top-level folder is mapped, not shipped a second time.
    assert not [n for n in names if n.startswith("templates/")]


def test_migrations_and_both_packages_ship(names: set[str]) -> None:
    for required in (
        "gateway/__init__.py",
        "gateway/cli.py",
        "gateway/migrations/env.py",
        "gateway/migrations/script.py.mako",
        "gateway/migrations/versions/0001_initial.py",
        "handlers/__init__.py",
    ):
        assert required in names, required
    # Only the two packages (and their data): no tests, benches, caches or local state.
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"gateway", "handlers", "carebridge-0.1.0.dist-info"}, tops
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".db"))]


def test_entry_points_survive(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read("carebridge-0.1.0.dist-info/entry_points.txt").decode()
    ep = configparser.ConfigParser()
    ep.read_string(text)
    assert ep["console_scripts"]["carebridge"] == "gateway.cli:main"
    assert ep["carebridge.routing"]["default"] == "handlers:ROUTING"


def test_installed_layout_is_found_and_renders(wheel: Path, tmp_path: Path) -> None:
    """The unpacked wheel ahead of the checkout on the path: templates_dir() picks the package
    data (importlib.resources), and a page, an email and a Spanish catalogue load from it."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    probe = """
import sys
from pathlib import Path

import gateway
from gateway.i18n import translations
from gateway.outbound.render import EmailContext, Renderer
from gateway.templating import build_environment, templates_dir

site = Path(sys.argv[1])
assert Path(gateway.__file__).parent == site / "gateway", gateway.__file__
assert templates_dir() == site / "gateway" / "templates", templates_dir()
build_environment().get_template("web/staff-login.html.j2")
ctx = EmailContext(audience="patient", kind="registration_invitation", lang="es",
                   clinic_name="Riverside", link="https://portal.example/t/TOKEN")
rendered = Renderer().render(ctx)
assert "https://portal.example/t/TOKEN" in rendered.text
assert translations("es").gettext("Enrol online") == "Inscribirse en línea"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_checkout_reads_the_source_tree() -> None:
    from gateway.templating import templates_dir

    assert templates_dir() == REPO / "templates"

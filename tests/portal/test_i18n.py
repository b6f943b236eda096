"""Every portal string has a Spanish translation, and Spanish pages say lang="es"."""

from __future__ import annotations

from pathlib import Path

import httpx
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

from gateway.services import Services
from gateway.templating import templates_dir
from tests.portal.helpers import active_patient, patient_sign_in
from tests.support.world import World

PORTAL_TEMPLATES = [
    templates_dir() / "web" / "base.html.j2",
    templates_dir() / "web" / "staff-login.html.j2",
    templates_dir() / "web" / "error.html.j2",
    *sorted((templates_dir() / "web" / "portal").rglob("*.j2")),
]


def msgids(path: Path) -> list[str]:
    opts = {"extensions": "jinja2.ext.i18n", "trim_blocks": "1", "lstrip_blocks": "1"}
    out = []
    with path.open("rb") as fh:
        for _line, _func, msg, _comments in babel_extract(
            fh, ["_", "gettext", "ngettext"], [], opts
        ):
            out.append(msg[0] if isinstance(msg, tuple) else msg)
    return out


def test_every_portal_string_is_translated_to_spanish() -> None:
    with (templates_dir() / "locale" / "es" / "portal.po").open("rb") as fh:
        catalog = read_po(fh)
    missing = []
    for path in PORTAL_TEMPLATES:
        for msg in msgids(path):
            entry = catalog.get(msg)
            text = entry.string if entry is not None else None
            if not text or (isinstance(text, tuple) and not all(text)):
                missing.append(f"{path.name}: {msg}")
    assert missing == []


async def test_spanish_pages_for_a_spanish_speaking_patient(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await active_patient(services, clinic, language="es")
    await patient_sign_in(client, "pat@example.org")
    page = await client.get("/portal")
    assert '<html lang="es">' in page.text and "Bandeja de entrada" in page.text
    page = await client.get("/portal/compose/appointment")
    assert "Los mensajes se responden en un día hábil." in page.text
    # The visitor's own choice wins over the account's language.
    await client.get("/lang/en", params={"next": "/portal"})
    assert '<html lang="en">' in (await client.get("/portal")).text

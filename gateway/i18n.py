"""Translations (en, es) for emails and pages.

Catalogs are plain ``.po`` files under ``templates/locale/<lang>/`` (one per area, merged at
load; the directory is :func:`gateway.templating.templates_dir`'s), compiled in memory with
babel at start-up: nothing generated is committed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

from gateway.templating import templates_dir

LANGUAGES = ("en", "es")


@cache
def translations(lang: str) -> NullTranslations:
    """Merged translations for ``lang``; English (the source language) is the identity."""
    if lang not in LANGUAGES or lang == "en":
        return NullTranslations()
    merged = Translations()
    for po in sorted((templates_dir() / "locale" / lang).glob("*.po")):
        merged.merge(_compile(po))
    return merged


def _compile(path: Path) -> Translations:
    import io

    from babel.messages.mofile import write_mo

    with path.open("rb") as fh:
        catalog = read_po(fh)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(fp=buf)


def gettext_for(lang: str) -> dict[str, object]:
    """The names Jinja2's i18n extension looks up in a render context."""
    t = translations(lang)
    return {"gettext": t.gettext, "ngettext": t.ngettext, "_": t.gettext, "lang": lang}

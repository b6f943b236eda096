"""The Jinja2 environment, built once: autoescape on for HTML, i18n extension enabled.

Templates, the stylesheet and the locale catalogues live in the repository's top-level
``templates/``; the wheel carries them as package data at ``gateway/templates``.
:func:`templates_dir` is the one place that decides which of the two is used.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

# A checkout or an editable install: gateway/ sits beside templates/.
_SOURCE_TREE = Path(__file__).resolve().parent.parent / "templates"

# What /readyz loads to prove the templates are there: a page and an email.
PROBE_TEMPLATES = ("web/base.html.j2", "email/base.html.j2")


@cache
def templates_dir() -> Path:
    """The directory holding ``email/``, ``web/`` and ``locale/``.

    Installed from the wheel it is package data (found through :mod:`importlib.resources`);
    otherwise the source tree's ``templates/``. Wheels install unpacked, so the packaged
    directory is a real path that Jinja2's loader and ``FileResponse`` can read.
    """
    packaged = resources.files("gateway") / "templates"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return _SOURCE_TREE


def build_environment(directory: Path | None = None) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(directory or templates_dir())),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env

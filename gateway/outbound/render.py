"""Notification templates -> subject, text and HTML, from a PHI-free :class:`EmailContext`.

Templates live under ``templates/email/<audience>/<kind>.{txt,html}.j2`` and see only the
fields of :class:`EmailContext`: the clinic's display name and phone, counts, kinds, links and
formatted times. Nothing about the patient (name, subject, body, result value) can reach a
template because no field can carry it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_skeleton, format_time
from jinja2 import Environment, Template

from gateway.i18n import LANGUAGES, gettext_for
from gateway.portal import terms
from gateway.templating import build_environment

_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
DEFAULT_COLOR = "#1f5f8b"
AUDIENCES = ("patient", "staff")


@dataclass(frozen=True)
class EmailContext:
    """Everything a notification template may use. No field can hold PHI."""

    audience: str  # "patient" or "staff"
    kind: str
    lang: str
    clinic_name: str
    link: str
    clinic_phone: str = ""
    brand_color: str = DEFAULT_COLOR
    count: int = 1
    urgent_count: int = 0
    unsubscribe_link: str | None = None
    reply_allowed: bool = False
    expected_reply: str | None = None  # already formatted in the clinic's timezone
    reopens: str | None = None
    pool_name: str | None = None  # staff mail only: a pool is a clinic's queue, not PHI


_FIELDS = dataclasses.fields(EmailContext)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def brand_color(branding: dict[str, Any]) -> str:
    """The clinic's accent colour, only if it is a plain ``#rrggbb`` (it lands in CSS)."""
    value = branding.get("color") if isinstance(branding, dict) else None
    return value if isinstance(value, str) and _COLOR.match(value) else DEFAULT_COLOR


def format_when(when: datetime | None, timezone: str, lang: str) -> str | None:
    """A date and time the patient reads in the clinic's zone: "Tue, Mar 3 9:00 AM CST"."""
    if when is None:
        return None
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = when.astimezone(tz)
    day = format_skeleton("MMMEd", local, tzinfo=tz, locale=_locale(lang))
    clock = format_time(local, "short", tzinfo=tz, locale=_locale(lang))
    return f"{day} {clock} {local.tzname() or ''}".strip()


@cache
def _locale(lang: str) -> Locale:
    # Parsed once: babel would otherwise build a Locale on every call.
    return Locale.parse(lang if lang in LANGUAGES else "en")


def template_name(audience: str, kind: str) -> str:
    if audience not in AUDIENCES:
        raise ValueError(f"unknown audience {audience!r}")
    return f"email/{audience}/{kind.replace('_', '-')}"


class Renderer:
    """Renders notifications with one Jinja2 environment (templates compiled once)."""

    def __init__(self, env: Environment | None = None) -> None:
        self.env = env or build_environment()
        # Compiled templates by name: get_template would stat the file on every call.
        self._templates: dict[str, Template] = {}

    def _template(self, name: str) -> Template:
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self.env.get_template(name)
        return template

    def render(self, ctx: EmailContext) -> Rendered:
        lang = ctx.lang if ctx.lang in LANGUAGES else "en"
        # Shallow: every field is a plain value (asdict's deep copy costs more than render).
        values: dict[str, Any] = {f.name: getattr(ctx, f.name) for f in _FIELDS}
        values.update(gettext_for(lang))
        values["lang"] = lang
        # Quoted back in an "I agree" reply; handlers/registration.py reads it there.
        values["terms_version"] = terms.CURRENT
        name = template_name(ctx.audience, ctx.kind)
        text_t = self._template(name + ".txt.j2")
        html_t = self._template(name + ".html.j2")
        return Rendered(
            subject=_subject(text_t, values),
            text=_tidy(text_t.render(values)),
            html=html_t.render(values),
        )


def _subject(template: Template, values: dict[str, Any]) -> str:
    block = template.blocks.get("subject")
    if block is None:
        raise ValueError(f"template {template.name} has no subject block")
    raw = "".join(block(template.new_context(values)))
    # One line, always: a line break in a header would be header injection.
    return " ".join(raw.split())


def _tidy(text: str) -> str:
    """Collapse the blank lines that optional blocks leave behind."""
    out = re.sub(r"\n{3,}", "\n\n", text.strip() + "\n")
    return out

"""The portal's terms of service: a versioned document, agreed to per version.

Each version is a template ``templates/web/portal/terms/<version>.html.j2`` (translated with
the portal catalog). Changing the terms means adding a template and bumping ``CURRENT``; a
patient's ``terms_version`` says which text they agreed to and when.
"""

from __future__ import annotations

CURRENT = "2026-01"


def template_for(version: str = CURRENT) -> str:
    return f"portal/terms/{version}.html.j2"

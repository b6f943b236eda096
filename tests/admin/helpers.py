"""Helpers shared by the admin tests: the real command line, signing in over HTTP, posting
forms with their CSRF token, and quarantined mail to work on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.models import InboundMessage, QuarantineItem
from gateway.services import Services
from tests.support.canaries import CANARY_EMAIL, CANARY_TEXT

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "from gateway.cli import main; main()"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Cli:
    config_path: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-c", _MAIN, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )


# -- the web app, signed in ----------------------------------------------------------------
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery staple 42"


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/staff/login")
    r = await client.post(
        "/staff/login",
        data={"email": email, "password": PASSWORD, "next": "/admin",
              "csrf_token": csrf_of(page.text)},
    )  # fmt: skip
    assert r.status_code == 303, r.text


async def post_page(
    client: httpx.AsyncClient, page: str, action: str, data: dict[str, str]
) -> httpx.Response:
    """POST a form the way a browser does: with the CSRF token from the page it is on."""
    html = (await client.get(page)).text
    return await client.post(action, data={**data, "csrf_token": csrf_of(html)})


# -- quarantined mail ---------------------------------------------------------------------
RAW = (
    f"From: {CANARY_EMAIL}\r\nTo: reply+abc@reply.north.example\r\n"
    f"Subject: {CANARY_TEXT}\r\nMessage-ID: <q1@example.org>\r\n"
    f"Date: Mon, 02 Mar 2026 15:00:00 +0000\r\n\r\n{CANARY_TEXT}\r\n"
).encode()


async def held_in_quarantine(services: Services, clinic_id: str, n: int = 1) -> list[str]:
    """Put ``n`` quarantined replies (PHI canaries in them) for the clinic in the store."""
    ids = []
    async with services.transaction() as s:
        for i in range(n):
            inbound = InboundMessage(
                source="smtp",
                route="reply",
                raw=RAW.replace(b"<q1@", f"<q{i}x{clinic_id[:6]}@".encode()),
                size=len(RAW),
                state="quarantined",
                auth={"dkim": "none", "spf": "none"},
                clinic_id=clinic_id,
            )
            s.add(inbound)
            await s.flush()
            item = QuarantineItem(
                inbound_id=inbound.id, reason="not_authenticated", detail="no aligned DKIM"
            )
            s.add(item)
            await s.flush()
            ids.append(item.id)
    return ids

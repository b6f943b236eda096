"""Helpers for the care-team stories over real HTTP and a real outbox: signing staff in,
submitting set-up forms with their CSRF token, finding pools, and delivering queued mail."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
from sqlalchemy import select

from gateway.models import Notification, Pool
from gateway.outbound.delivery import DeliveryPart
from gateway.services import Services

PASSWORD = "correct horse battery staple 42"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/staff/login")
    r = await client.post(
        "/staff/login",
        data={"email": email, "password": PASSWORD, "csrf_token": CSRF_RE.findall(page.text)[0]},
    )
    assert r.status_code == 303, r.text


async def post(
    client: httpx.AsyncClient, page: str, action: str, data: dict[str, str]
) -> httpx.Response:
    """Load the page a form lives on (for its CSRF token), then submit it."""
    html = (await client.get(page)).text
    return await client.post(action, data={**data, "csrf_token": CSRF_RE.findall(html)[0]})


async def pool_by_slug(services: Services, clinic_id: str, slug: str) -> Pool:
    async with services.sessions() as s:
        pool = await s.scalar(select(Pool).where(Pool.clinic_id == clinic_id, Pool.slug == slug))
        assert pool is not None
        return pool


async def notifications(services: Services, kind: str) -> list[Notification]:
    async with services.sessions() as s:
        rows = await s.scalars(
            select(Notification).where(Notification.kind == kind).order_by(Notification.created_at)
        )
        return list(rows)


async def deliver_due(services: Services) -> dict[str, EmailMessage]:
    """Run delivery until nothing is due; the outbox (maildir) by notification id."""
    part = DeliveryPart(services)
    try:
        while await part.run_once("test-worker"):
            pass
    finally:
        await part.transport.close()
    directory = Path(services.config.path(services.config.delivery.maildir))
    out = {}
    for path in sorted(directory.glob("*.eml")) if directory.exists() else []:
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out[path.stem] = msg
    return out


def decoded(msg: EmailMessage) -> str:
    """Every header and every body part of an email, as text."""
    parts = [f"{k}: {v}" for k, v in msg.items()]
    parts += [str(p.get_content()) for p in msg.walk() if not p.is_multipart()]
    return "\n".join(parts)

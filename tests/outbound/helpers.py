"""Small helpers shared by the outbound tests."""

from __future__ import annotations

from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage

from sqlalchemy import select

from gateway.config import DnsConfig
from gateway.dns import blocking_resolver
from gateway.inbound import dnsresolve
from gateway.models import Clinic, DkimKey, Notification
from gateway.outbound import dkim
from gateway.outbound.delivery import DeliveryPart
from gateway.services import Services


async def publish_keys(services: Services, clinic: Clinic, zone: object) -> list[DkimKey]:
    """Create the clinic's DKIM keys and publish them in the test DNS zone."""
    async with services.transaction() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None
        rows = await dkim.ensure_domain_keys(s, c, now=services.clock.now())
    for row in rows:
        name = f"{row.selector}._domainkey.{row.domain}"
        zone.txt[name] = dkim.dns_txt((row.algorithm, row.public_key))  # type: ignore[attr-defined]
    return rows


def dkim_dnsfunc(nameservers: tuple[str, ...]) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` on these nameservers: the lookup a receiving carebridge makes."""
    lookup: Callable[..., bytes | None] = dnsresolve.dkim_dnsfunc(
        blocking_resolver(DnsConfig(nameservers=nameservers))
    )
    return lookup


async def deliver_all(services: Services, part: DeliveryPart | None = None) -> DeliveryPart:
    """Run delivery rounds until nothing is due (the part's transport is closed after)."""
    own = part is None
    part = part or DeliveryPart(services)
    try:
        while await part.run_once("test-worker"):
            pass
    finally:
        if own:
            await part.transport.close()
    return part


async def notification(services: Services, notification_id: str) -> Notification:
    async with services.sessions() as s:
        row = await s.scalar(select(Notification).where(Notification.id == notification_id))
        assert row is not None
        return row


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())

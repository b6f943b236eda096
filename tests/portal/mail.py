"""Reading what carebridge sent: run the real delivery worker into the maildir, parse the .eml."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from gateway.outbound.delivery import DeliveryPart
from gateway.services import Services

LINK_RE = re.compile(r"https?://[^\s/]+(/(?:r|t|reset|u)/[A-Za-z0-9_-]{20,64})")


@dataclass
class Sent:
    message: EmailMessage
    raw: bytes

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())

    def link(self, prefix: str) -> str:
        """The first link path starting with ``prefix`` (e.g. "/r/"), path only."""
        for match in LINK_RE.finditer(self.text):
            if match.group(1).startswith(prefix):
                return match.group(1)
        raise AssertionError(f"no {prefix} link in the email")


async def deliver(services: Services) -> list[Sent]:
    """Deliver everything due and return the new messages in the maildir (oldest first)."""
    outbox = Path(services.config.delivery.maildir)
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()
    part = DeliveryPart(services)
    try:
        while await part.run_once():
            pass
    finally:
        await part.transport.close()
    new = sorted(set(outbox.glob("*.eml")) - before, key=lambda p: p.stat().st_mtime_ns)
    out = []
    for path in new:
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(Sent(msg, raw))
    return out

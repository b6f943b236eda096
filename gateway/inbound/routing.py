"""Judging recipients and picking handlers with the routing table the intake was given.

The table itself (``gateway/inbound/handling.py``: ordered (local-part pattern, token purpose,
handler) rows, first match wins) is data from the handler package. Recipients are judged at
RCPT time against it (unknown address, unknown domain, or a token that is not live: 550 5.1.1,
so nothing is ever bounced back later); where several routes share one address shape, the
token's subject kind picks one (a staff member's reply token, a patient's). A token works
only at its own clinic's reply domain: one organisation's reply token at another's domain is
550 5.1.1 like any unknown address. The same table
picks the handler once the message is stored. Routes that carry a person's words are screened
for automatic replies first, which go to the table's auto-reply handler instead.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import tokens
from gateway.admin import clinics
from gateway.inbound.auth import ReceivedEnvelope
from gateway.inbound.handling import Handler, Route, RoutingTable
from gateway.inbound.parsing import ParsedMail, automated_reason
from gateway.models import Notification, Staff, Thread, Token

# Mail that reached an IMAP mailbox without any address of ours: stored and quarantined.
UNROUTED = "unrouted"


@dataclass(frozen=True)
class Target:
    """A recipient accepted at RCPT time: the route, the clinic and the token row."""

    route: str
    clinic_id: str | None
    token_id: str | None
    # When the token stops being live (None for postmaster@/abuse@): bounds any caching.
    expires_at: datetime | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.route}:{self.token_id or self.clinic_id or ''}"


async def resolve_recipient(
    session: AsyncSession, routing: RoutingTable, address: str, now: datetime
) -> Target | None:
    """The target for an RCPT address, or None (the caller answers 550 5.1.1)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > 254:
        return None
    clinic = await clinics.clinic_by_reply_domain(session, domain.rstrip(".").lower())
    if clinic is None or not clinic.reply_domain:
        return None
    found = routing.match(local)
    if found is None:
        return None
    route, value = found
    if route.token_purpose is None:
        return Target(route.name, clinic.id, None)
    assert value is not None
    row = await tokens.peek(session, value, route.token_purpose, now)
    if row is None or await token_clinic(session, row) != clinic.id:
        return None
    route = routing.for_subject(route, row.subject_kind)
    return Target(route.name, clinic.id, row.id, row.expires_at)


async def token_clinic(session: AsyncSession, row: Token) -> str | None:
    """The clinic an address token belongs to: stamped when minted, else found through its
    subject (the notification, the thread or the staff member). None: it belongs nowhere,
    and is refused everywhere."""
    if row.clinic_id:
        return row.clinic_id
    data = row.data or {}
    stamped = data.get("clinic_id")
    if isinstance(stamped, str) and stamped:
        return stamped
    if row.subject_kind == "notification":
        notification = await session.get(Notification, row.subject_id)
        return notification.clinic_id if notification is not None else None
    thread_id = data.get("thread_id")
    if isinstance(thread_id, str) and thread_id:
        thread = await session.get(Thread, thread_id)
        return thread.clinic_id if thread is not None else None
    if row.subject_kind == "staff":
        staff = await session.get(Staff, row.subject_id)
        return staff.clinic_id if staff is not None else None
    return None


class RecipientCache:
    """RCPT verdicts remembered for a few seconds, so a sender's retries, several messages
    to one address and address-guessing floods do not each cost store queries. A remembered
    "yes" never outlives its token's expiry; the handler re-checks the token anyway."""

    def __init__(self, ttl_seconds: float = 30.0, size: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.size = size
        self._entries: OrderedDict[str, tuple[float, Target | None]] = OrderedDict()

    def get(self, address: str, now: datetime) -> tuple[bool, Target | None]:
        entry = self._entries.get(address)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        target = entry[1]
        if target is not None and target.expires_at is not None and target.expires_at <= now:
            return False, None
        return True, target

    def put(self, address: str, target: Target | None) -> None:
        clock = time.monotonic()
        self._entries[address] = (clock + self.ttl, target)
        self._entries.move_to_end(address)
        # Oldest first, and every entry lives ttl: expired ones sit at the front. Dropping
        # them keeps a steady stream's cache at rate x ttl entries instead of ``size``.
        while self._entries and next(iter(self._entries.values()))[0] < clock:
            self._entries.popitem(last=False)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def choose_handler(
    routing: RoutingTable,
    route: Route | None,
    mail: ParsedMail,
    envelope: ReceivedEnvelope,
    source: str,
) -> tuple[Handler | None, str | None]:
    """The handler for a stored message, and the automatic-reply reason when there is one."""
    if route is None:
        return None, None
    if route.screen_automated:
        reason = automated_reason(mail, envelope, source)
        if reason is not None:
            return routing.automated, reason
    return route.handler, None

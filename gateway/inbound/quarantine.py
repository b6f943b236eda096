"""The quarantine: inbound mail that may not enter a thread, held for an operator.

Each item has a PHI-free reason code and detail, the time, and points at the stored message
(raw bytes encrypted). Operators list and inspect items, release one (which re-runs the
intake path: authentication, routing and the handler, as if it had just arrived; useful once
the cause is fixed, e.g. the sender's DNS or the patient's address on file), or discard one
(its raw message is erased). Every action, and every read of a raw message, is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError, UsageError
from gateway.inbound.handling import Outcome, Quarantine
from gateway.inbound.intake import Intake
from gateway.models import InboundMessage, QuarantineItem
from gateway.services import Services

STATES = ("held", "released", "discarded", "all")


def summary(item: QuarantineItem, inbound: InboundMessage) -> dict[str, Any]:
    """What an operator may see without reading the message: ids, codes, verdicts, sizes."""
    return {
        "id": item.id,
        "state": item.state,
        "reason": item.reason,
        "detail": item.detail or "",
        "created_at": item.created_at.isoformat(timespec="seconds"),
        "resolved_at": item.resolved_at.isoformat(timespec="seconds") if item.resolved_at else "",
        "resolved_by": item.resolved_by or "",
        "inbound_id": inbound.id,
        "source": inbound.source,
        "route": inbound.route,
        "clinic_id": inbound.clinic_id or "",
        "size": inbound.size,
        "auth": dict(inbound.auth or {}),
    }


async def list_items(
    session: AsyncSession, state: str = "held", limit: int = 100
) -> Sequence[tuple[QuarantineItem, InboundMessage]]:
    if state not in STATES:
        raise UsageError(f"state {state!r} is unknown; use one of: {', '.join(STATES)}")
    q = select(QuarantineItem, InboundMessage).join(
        InboundMessage, InboundMessage.id == QuarantineItem.inbound_id
    )
    if state != "all":
        q = q.where(QuarantineItem.state == state)
    rows = (await session.execute(q.order_by(QuarantineItem.created_at).limit(limit))).all()
    return [(item, inbound) for item, inbound in rows]


async def get_item(session: AsyncSession, item_id: str) -> tuple[QuarantineItem, InboundMessage]:
    item = await session.get(QuarantineItem, item_id)
    inbound = await session.get(InboundMessage, item.inbound_id) if item else None
    if item is None or inbound is None:
        raise NotFoundError(f"no quarantine item {item_id!r}; see 'carebridge quarantine list'")
    return item, inbound


async def read_raw(services: Services, item_id: str, actor: str) -> bytes:
    """The stored message itself (PHI): the read is audited."""
    async with services.transaction() as session:
        item, inbound = await get_item(session, item_id)
        await audit.record(
            session, actor, "quarantine.read", "quarantine", item.id, inbound_id=inbound.id
        )
        if not inbound.raw:
            raise UsageError(f"quarantine item {item_id} was discarded; its message is erased")
        return inbound.raw


async def _resolve(
    session: AsyncSession, item_id: str, state: str, actor: str, services: Services
) -> tuple[QuarantineItem, InboundMessage]:
    item, inbound = await get_item(session, item_id)
    if item.state != "held":
        raise UsageError(f"quarantine item {item_id} is already {item.state}")
    item.state = state
    item.resolved_at = services.clock.now()
    item.resolved_by = actor
    return item, inbound


@dataclass(frozen=True)
class Released:
    item_id: str
    inbound_id: str
    outcome: Outcome | None  # None: processed meanwhile by someone else

    @property
    def quarantined_again(self) -> bool:
        return isinstance(self.outcome, Quarantine)


async def release(services: Services, intake: Intake, item_id: str, actor: str) -> Released:
    """Re-run the intake path on the held message. It may be quarantined again (new item).

    The message is marked ``received`` again and processed by ``intake`` (authentication,
    routing with the intake's table, the handler) right here; the CLI and the admin page
    pass a short-lived intake of their own and close it afterwards, which also finishes any
    retry a failing handler asked for. ``outcome`` is None when nothing was decided here
    (another worker processed the message first, or the handler asked to be retried)."""
    async with services.transaction() as session:
        item, inbound = await _resolve(session, item_id, "released", actor, services)
        if not inbound.raw:
            raise UsageError(f"quarantine item {item_id}'s message was erased; nothing to release")
        inbound.state = "received"
        inbound.attempts = 0
        inbound.handler = None
        await audit.record(
            session, actor, "quarantine.release", "quarantine", item.id, inbound_id=inbound.id
        )
    outcome = await intake.process(inbound.id)
    return Released(item.id, inbound.id, outcome)


async def discard(services: Services, item_id: str, actor: str) -> None:
    """Drop the message for good: the item stays (for the record), the raw bytes do not."""
    async with services.transaction() as session:
        item, inbound = await _resolve(session, item_id, "discarded", actor, services)
        inbound.raw = b""
        inbound.state = "discarded"
        await audit.record(
            session, actor, "quarantine.discard", "quarantine", item.id, inbound_id=inbound.id
        )

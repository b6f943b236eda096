"""The quarantine: inbound mail that may not enter a thread, held for an operator.

Each item has a PHI-free reason code and detail, the time, and points at the stored message
(raw bytes encrypted). Operators list and inspect items, release one (which re-runs the
intake path: authentication, routing and the handler, as if it had just arrived; useful once
the cause is fixed, e.g. the sender's DNS or the patient's address on file), or discard one
(its raw message is erased). Every action, and every read of a raw message, is audited.

Nobody is left in silence: when a message addressed with a live patient token (a reply or a
registration answer) is quarantined, :func:`tell_patient` queues one PHI-free notice to the
patient's ENROLLED address (never the From of the suspect message, which may be forged):
the reply was not delivered, open the conversation to send it securely. At most one such
notice per thread per day (per patient per day when there is no thread), so a sender who
keeps forging replies cannot turn the gateway into a mail cannon aimed at the patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError, UsageError
from gateway.inbound.handling import Outcome, Quarantine
from gateway.models import (
    Clinic,
    InboundMessage,
    Notification,
    Patient,
    QuarantineItem,
    Thread,
    Token,
)
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.services import Services

STATES = ("held", "released", "discarded", "all")

# Token purposes whose subject is the patient who should have written the message.
PATIENT_TOKEN_PURPOSES = ("reply_address", "registration")
# Quarantine reasons after which the patient is not told: the token no longer names a patient
# of this clinic who can act on the notice.
_NOT_TOLD = frozenset({"token_expired", "token_invalid", "patient_disabled"})


class Processor(Protocol):
    """What :func:`release` needs of the intake (``gateway.inbound.intake.Intake``)."""

    async def process(self, inbound_id: str) -> Outcome | None: ...


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


async def release(services: Services, intake: Processor, item_id: str, actor: str) -> Released:
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


def notice_key(subject: str, clinic: Clinic, now: datetime) -> str:
    """One "reply not delivered" notice per subject (thread or patient) per clinic-local day."""
    try:
        tz = ZoneInfo(clinic.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    day = now.astimezone(tz).date().isoformat()
    return f"{Kind.REPLY_NOT_DELIVERED}:{subject}:{day}"


async def tell_patient(
    services: Services,
    session: AsyncSession,
    row: InboundMessage,
    outcome: Outcome | None,
    now: datetime,
) -> Notification | None:
    """Queue the PHI-free "your email reply was not delivered" notice, in the caller's
    transaction, when ``outcome`` quarantined a message whose live token names a patient.

    The notice goes to the address on file for the token's patient and links (a view_thread
    link minted at delivery) to the thread the token named. None when nobody is told: not a
    quarantine, no live patient token, or already told today about this thread.
    """
    if not isinstance(outcome, Quarantine) or outcome.reason in _NOT_TOLD or not row.token_id:
        return None
    token = await session.get(Token, row.token_id)
    if (
        token is None
        or token.purpose not in PATIENT_TOKEN_PURPOSES
        or token.subject_kind != "patient"
        or token.expires_at <= now
    ):
        return None
    patient = await session.get(Patient, token.subject_id)
    if patient is None or patient.status == "disabled":
        return None
    thread_id = (token.data or {}).get("thread_id")
    thread = await session.get(Thread, str(thread_id)) if thread_id else None
    if thread is not None and thread.patient_id != patient.id:
        thread = None
    clinic_id = thread.clinic_id if thread else row.clinic_id or (token.data or {}).get("clinic_id")
    clinic = await session.get(Clinic, str(clinic_id)) if clinic_id else None
    if clinic is None or clinic.org_id != patient.org_id:
        return None
    key = notice_key(f"thread:{thread.id}" if thread else f"patient:{patient.id}", clinic, now)
    told = await session.scalar(
        select(Notification.id).where(Notification.coalesce_key == key).limit(1)
    )
    if told is not None:
        return None
    notification = await enqueue(
        session,
        services.keyring,
        notice=Notice(kind=Kind.REPLY_NOT_DELIVERED, thread_id=thread.id if thread else None),
        clinic_id=clinic.id,
        recipient=patient.email,
        now=now,
        language=patient.language,
        patient_id=patient.id,
        coalesce_key=key,
        coalesce_seconds=0,
    )
    await audit.record(
        session,
        "system",
        "quarantine.patient_told",
        "patient",
        patient.id,
        at=now,
        inbound_id=row.id,
        reason=outcome.reason,
        notification_id=notification.id,
    )
    return notification

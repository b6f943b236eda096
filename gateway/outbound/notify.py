"""Queueing PHI-free notifications: the only way any part of carebridge asks for an email.

Callers pass a :class:`Notice`, a typed context that has no field able to hold PHI: ids,
counts, kinds and times only. Names, subjects, bodies and result values cannot reach an email
because there is nowhere to put them. This module writes (or coalesces into) the queue row;
rendering and delivery happen in :mod:`gateway.outbound`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.addresses import domain_of, validate_address
from gateway.crypto import KeyRing
from gateway.models import Notification
from gateway.models.types import new_id


class Kind(StrEnum):
    REGISTRATION_INVITATION = "registration_invitation"
    NEW_MESSAGE = "new_message"
    NEW_RESULT = "new_result"
    APPOINTMENT_REMINDER = "appointment_reminder"
    REQUEST_RECEIVED = "request_received"
    PASSWORD_RESET = "password_reset"  # noqa: S105 (a kind name, not a password)
    REPLY_ACKNOWLEDGED = "reply_acknowledged"
    SLA_BREACH_PATIENT = "sla_breach_patient"
    STAFF_DIGEST = "staff_digest"
    SLA_WARNING = "sla_warning"
    SLA_BREACH = "sla_breach"
    CONTACT_PATIENT = "contact_patient"
    # Another clinic asked to care for the patient; they approve or decline in the portal.
    CLINIC_CONNECTION = "clinic_connection"
    # A patient's emailed reply was quarantined: "open your conversation to send it securely".
    REPLY_NOT_DELIVERED = "reply_not_delivered"
    # Staff: a request landed in a pool nobody watches; sent to the clinic's fallback recipient.
    UNWATCHED_REQUEST = "unwatched_request"


PATIENT_KINDS = frozenset(
    {
        Kind.REGISTRATION_INVITATION,
        Kind.NEW_MESSAGE,
        Kind.NEW_RESULT,
        Kind.APPOINTMENT_REMINDER,
        Kind.REQUEST_RECEIVED,
        Kind.PASSWORD_RESET,
        Kind.REPLY_ACKNOWLEDGED,
        Kind.SLA_BREACH_PATIENT,
        Kind.CLINIC_CONNECTION,
        Kind.REPLY_NOT_DELIVERED,
    }
)
# Kinds a patient may switch off; the others are transactional and always sent.
OPTIONAL_KINDS = frozenset({Kind.NEW_MESSAGE, Kind.NEW_RESULT, Kind.APPOINTMENT_REMINDER})


@dataclass(frozen=True)
class Notice:
    """Everything a notification template may know. No field can hold PHI."""

    kind: Kind
    count: int = 1
    urgent_count: int = 0
    thread_id: str | None = None  # an id, used to mint a view-thread link at render time
    pool_id: str | None = None  # staff digests: which pool (its name is not PHI)
    expected_reply_at: datetime | None = None  # UTC; shown in the clinic's local time
    reopens_at: datetime | None = None  # out of hours: when the clinic opens again

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                v.isoformat() if isinstance(v, datetime) else str(v) if f.name == "kind" else v
            )
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Notice:
        kw: dict[str, Any] = dict(doc)
        kw["kind"] = Kind(kw["kind"])
        for name in ("expected_reply_at", "reopens_at"):
            if kw.get(name):
                kw[name] = datetime.fromisoformat(kw[name])
        return cls(**kw)


# Kinds whose events for one person are gathered into one email when the caller gives no
# coalesce key: "3 new messages" rather than three emails.
COALESCING_KINDS = frozenset({Kind.NEW_MESSAGE, Kind.NEW_RESULT, Kind.REPLY_ACKNOWLEDGED})
# The window used when the caller does not pass ``[delivery] coalesce_seconds``.
DEFAULT_COALESCE_SECONDS = 120


def default_coalesce_key(notice: Notice, patient_id: str | None) -> str | None:
    if patient_id is None or notice.kind not in COALESCING_KINDS:
        return None
    return f"{notice.kind}:{patient_id}"


def merge(context: dict[str, Any], notice: Notice) -> dict[str, Any]:
    """One queued notice absorbs another: counts add up; a thread link survives only if
    both are about the same thread (otherwise the email links to the inbox)."""
    merged = dict(context)
    merged["count"] = int(context.get("count", 1)) + notice.count
    merged["urgent_count"] = int(context.get("urgent_count", 0)) + notice.urgent_count
    if context.get("thread_id") != notice.thread_id:
        merged["thread_id"] = None
    for name in ("expected_reply_at", "reopens_at"):
        value = getattr(notice, name)
        if value is not None:
            merged[name] = value.isoformat()
    return merged


async def _coalesce(
    session: AsyncSession, key: str, notice: Notice, recipient_hash: str
) -> Notification | None:
    """Fold ``notice`` into a still-queued row with ``key``; None when there is none.

    PostgreSQL: the candidate is locked with SKIP LOCKED, so a row a worker is claiming is
    left alone (a fresh row is queued instead). SQLite: the write transaction already holds
    the database lock. Either way the update is a compare-and-set on ``state = 'queued'``.
    """
    q = (
        select(Notification)
        .where(
            Notification.coalesce_key == key,
            Notification.state == "queued",
            Notification.claimed_by.is_(None),
            Notification.recipient_domain_hash == recipient_hash,
        )
        .order_by(Notification.created_at.desc())
        .limit(1)
    )
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    row = await session.scalar(q)
    if row is None:
        return None
    result = await session.execute(
        update(Notification)
        .where(Notification.id == row.id, Notification.state == "queued")
        .values(context=merge(row.context, notice))
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    await session.refresh(row)
    return row


async def enqueue(
    session: AsyncSession,
    keyring: KeyRing,
    *,
    notice: Notice,
    clinic_id: str,
    recipient: str,
    now: datetime,
    language: str = "en",
    patient_id: str | None = None,
    staff_id: str | None = None,
    coalesce_key: str | None = None,
    coalesce_seconds: int = DEFAULT_COALESCE_SECONDS,
) -> Notification:
    """Validate the address strictly and queue the notice (in the caller's transaction).

    With a coalesce key (given, or derived for :data:`COALESCING_KINDS`), the first event is
    held for ``coalesce_seconds`` (pass ``[delivery] coalesce_seconds``) and later events
    with the same key fold into it while it is still queued: one email says "3 new messages".
    """
    address = validate_address(recipient)
    domain_hash = keyring.blind_index(domain_of(address), "domain")
    key = coalesce_key or default_coalesce_key(notice, patient_id)
    if key is not None:
        existing = await _coalesce(session, key, notice, domain_hash)
        if existing is not None:
            return existing
    row = Notification(
        # The id is set here rather than at flush: callers get it at once, and a burst of
        # enqueues costs no database round trip each (the commit writes them together).
        id=new_id(),
        clinic_id=clinic_id,
        patient_id=patient_id,
        staff_id=staff_id,
        kind=str(notice.kind),
        language=language if language in ("en", "es") else "en",
        recipient=address,
        recipient_domain_hash=domain_hash,
        context=notice.to_json(),
        coalesce_key=key,
        state="queued",
        attempts=0,
        next_attempt_at=now + timedelta(seconds=coalesce_seconds) if key else now,
        created_at=now,
    )
    session.add(row)
    return row

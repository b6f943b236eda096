"""Queueing PHI-free notifications: the only way any part of carebridge asks for an email.

Callers pass a :class:`Notice`, a typed context that has no field able to hold PHI: ids,
counts, kinds and times only. Names, subjects, bodies and result values cannot reach an email
because there is nowhere to put them. Rendering, coalescing and delivery happen downstream
(see the outbound modules); this module only writes the queue row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.addresses import domain_of, validate_address
from gateway.crypto import KeyRing
from gateway.models import Notification


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
) -> Notification:
    """Validate the address strictly and write one queued row (in the caller's transaction)."""
    address = validate_address(recipient)
    row = Notification(
        clinic_id=clinic_id,
        patient_id=patient_id,
        staff_id=staff_id,
        kind=str(notice.kind),
        language=language if language in ("en", "es") else "en",
        recipient=address,
        recipient_domain_hash=keyring.blind_index(domain_of(address), "domain"),
        context=notice.to_json(),
        coalesce_key=coalesce_key,
        state="queued",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return row

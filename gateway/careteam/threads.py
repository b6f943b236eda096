"""Conversations between a patient and the clinic: the one place threads and messages change.

The portal, the inbound email handlers, the staff workspace and the REST API all call these
functions, so routing, the SLA clock, audit and notifications happen the same way whichever
door a message came through. Functions work in the caller's transaction and never commit.

SLA clock: a patient message starts the clock when none is running (a second message before
the clinic answers keeps the first, earlier deadline, so writing again never pushes the
clinic's deadline out); a staff answer to the patient stops it; internal notes do not.

Urgent first: a thread flagged urgent (by the portal's urgent screen or by staff) runs on the
clinic's own short clock (``Clinic.urgent_sla_minutes`` business minutes, one business hour by
default) and its pool, and the fallback recipient, are told at once whatever their digest
settings. Nobody unwatched: a request landing in a pool with no active member (or in no pool)
is sent to the clinic's fallback recipient (:func:`gateway.careteam.digests.note_unwatched`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.careteam import digests, sla
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, Message, Patient, Pool, RoutingRule, Staff, Thread
from gateway.models.org import REQUEST_TYPES
from gateway.outbound.notify import OPTIONAL_KINDS, Kind, Notice, enqueue
from gateway.services import Services

log = logging.getLogger("carebridge.threads")

SOURCES = ("portal", "email", "api", "desk")
# Bodies are stored encrypted; the cap stops one message from filling the store.
MAX_BODY_CHARS = 20_000
MAX_SUBJECT_CHARS = 200
# A routing rule with this request type catches everything no earlier rule matched.
ANY_REQUEST = "*"


def _check_text(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"the {what} is empty; write something before sending")
    if len(value) > limit:
        raise UsageError(f"the {what} is too long ({len(value)} characters; at most {limit})")
    return value


async def route(
    session: AsyncSession, clinic_id: str, request_type: str
) -> tuple[Pool | None, RoutingRule | None]:
    """The first rule (by position) for this request type, or a catch-all rule."""
    rules = (
        await session.scalars(
            select(RoutingRule)
            .where(
                RoutingRule.clinic_id == clinic_id,
                RoutingRule.request_type.in_([request_type, ANY_REQUEST]),
            )
            .order_by(RoutingRule.position)
        )
    ).all()
    if not rules:
        return None, None
    rule = rules[0]
    return await session.get(Pool, rule.pool_id), rule


def urgent_hours(clinic: Clinic) -> float:
    """The clinic's urgent reply deadline in business hours (default one)."""
    return (clinic.urgent_sla_minutes or 60) / 60


def _start_clock(thread: Thread, clinic: Clinic, now: datetime, hours: float | None) -> None:
    if thread.urgent:
        hours = urgent_hours(clinic) if hours is None else min(hours, urgent_hours(clinic))
    warn, due = sla.deadlines(clinic, now, hours)
    thread.sla_started_at = now
    thread.sla_warn_at = warn
    thread.sla_due_at = due
    thread.sla_warned_at = None
    thread.sla_breached_at = None


def _shorten_to_urgent(thread: Thread, clinic: Clinic, now: datetime) -> None:
    """A running clock moves to the urgent deadline when that is sooner (never later)."""
    due = sla.due_at(clinic, now, urgent_hours(clinic))
    if thread.sla_due_at is None or due < thread.sla_due_at:
        _start_clock(thread, clinic, now, urgent_hours(clinic))


def stop_clock(thread: Thread) -> None:
    thread.sla_started_at = None
    thread.sla_warn_at = None
    thread.sla_due_at = None


async def _sla_hours(session: AsyncSession, thread: Thread) -> int | None:
    _, rule = await route(session, thread.clinic_id, thread.request_type)
    return rule.sla_hours if rule is not None and rule.pool_id == thread.pool_id else None


async def _acknowledge(
    session: AsyncSession,
    services: Services,
    *,
    thread: Thread,
    patient: Patient,
    clinic: Clinic,
    kind: Kind,
) -> None:
    """Tell the patient we have it, when to expect a reply, and when the clinic reopens."""
    now = services.clock.now()
    reopens = None if sla.is_open(clinic, now) else sla.next_opening(clinic, now)
    await enqueue(
        session,
        services.keyring,
        notice=Notice(
            kind=kind,
            thread_id=thread.id,
            expected_reply_at=thread.sla_due_at,
            reopens_at=reopens,
        ),
        clinic_id=clinic.id,
        recipient=patient.email,
        now=now,
        language=patient.language,
        patient_id=patient.id,
        coalesce_seconds=services.config.delivery.coalesce_seconds,
    )


async def _notify_pool(
    session: AsyncSession, services: Services, thread: Thread, urgent: bool
) -> None:
    """Tell the pool; tell the fallback recipient when nobody watches it, or when urgent."""
    pool = await session.get(Pool, thread.pool_id) if thread.pool_id else None
    clinic = await session.get(Clinic, thread.clinic_id)
    if clinic is None:
        return
    members = await digests.pool_members(session, pool.id) if pool is not None else []
    if pool is None or not members:
        await digests.note_unwatched(
            session, services, clinic=clinic, thread=thread, pool=pool, urgent=urgent
        )
        return
    reached = await digests.note_new_message(session, services, pool=pool, urgent=urgent)
    if urgent:
        await digests.note_urgent_to_fallback(
            session, services, clinic=clinic, pool=pool, reached=reached
        )


async def create_thread(
    session: AsyncSession,
    services: Services,
    *,
    patient: Patient,
    clinic: Clinic,
    request_type: str,
    subject: str,
    body: str,
    details: dict[str, Any] | None = None,
    urgent: bool = False,
    source: str = "portal",
    actor: str,
) -> Thread:
    """Open a request: route it to a pool, start the SLA clock, store the first message."""
    if request_type not in REQUEST_TYPES:
        raise UsageError(
            f"request type {request_type!r} is unknown; use one of: {', '.join(REQUEST_TYPES)}"
        )
    if source not in SOURCES:
        raise UsageError(f"source {source!r} is unknown; use one of: {', '.join(SOURCES)}")
    _check_text(subject, "subject", MAX_SUBJECT_CHARS)
    _check_text(body, "message", MAX_BODY_CHARS)
    now = services.clock.now()
    pool, rule = await route(session, clinic.id, request_type)
    thread = Thread(
        clinic_id=clinic.id,
        patient_id=patient.id,
        pool_id=pool.id if pool else None,
        request_type=request_type,
        subject=subject,
        details=details,
        status="open",
        urgent=urgent,
        patient_unread=False,
        created_at=now,
        updated_at=now,
    )
    _start_clock(thread, clinic, now, rule.sla_hours if rule else None)
    session.add(thread)
    await session.flush()
    message = Message(
        thread_id=thread.id,
        author_kind="patient",
        author_id=patient.id,
        body=body,
        internal=False,
        source=source,
        created_at=now,
    )
    session.add(message)
    await session.flush()
    await audit.record(
        session,
        actor,
        "thread.create",
        "thread",
        thread.id,
        at=now,
        pool_id=thread.pool_id,
        request_type=request_type,
        message_id=message.id,
    )
    await _notify_pool(session, services, thread, urgent)
    await _acknowledge(
        session, services, thread=thread, patient=patient, clinic=clinic, kind=Kind.REQUEST_RECEIVED
    )
    log.info("thread created id=%s pool=%s type=%s", thread.id, thread.pool_id, request_type)
    return thread


async def post_patient_message(
    session: AsyncSession,
    services: Services,
    *,
    thread: Thread,
    body: str,
    source: str = "portal",
    inbound_id: str | None = None,
    actor: str,
) -> Message:
    """The patient writes again in a thread: reopen it and (re)start the SLA clock."""
    if source not in SOURCES:
        raise UsageError(f"source {source!r} is unknown; use one of: {', '.join(SOURCES)}")
    _check_text(body, "message", MAX_BODY_CHARS)
    now = services.clock.now()
    clinic = await session.get(Clinic, thread.clinic_id)
    patient = await session.get(Patient, thread.patient_id)
    if clinic is None or patient is None:
        raise NotFoundError(f"thread {thread.id} has no clinic or patient")
    message = Message(
        thread_id=thread.id,
        author_kind="patient",
        author_id=patient.id,
        body=body,
        internal=False,
        source=source,
        inbound_id=inbound_id,
        created_at=now,
    )
    session.add(message)
    reopened = thread.status != "open"
    thread.status = "open"
    thread.updated_at = now
    if thread.sla_due_at is None:
        _start_clock(thread, clinic, now, await _sla_hours(session, thread))
    elif thread.urgent:
        _shorten_to_urgent(thread, clinic, now)
    await session.flush()
    await audit.record(
        session,
        actor,
        "thread.patient_message",
        "thread",
        thread.id,
        at=now,
        message_id=message.id,
        source=source,
        reopened=reopened,
    )
    await _notify_pool(session, services, thread, thread.urgent)
    await _acknowledge(
        session,
        services,
        thread=thread,
        patient=patient,
        clinic=clinic,
        kind=Kind.REPLY_ACKNOWLEDGED if source == "email" else Kind.REQUEST_RECEIVED,
    )
    return message


def staff_may_act(staff: Staff, thread: Thread) -> bool:
    """Staff act on their own clinic's threads; operators on any."""
    return staff.active and (staff.role == "operator" or staff.clinic_id == thread.clinic_id)


def _wants(patient: Patient, kind: Kind) -> bool:
    if kind not in OPTIONAL_KINDS:
        return True
    prefs = patient.notification_prefs or {}
    return bool(prefs.get(str(kind), True))


async def post_staff_message(
    session: AsyncSession,
    services: Services,
    *,
    thread: Thread,
    staff: Staff,
    body: str,
    internal: bool = False,
    source: str = "portal",
) -> Message:
    """A staff answer (stops the clock, tells the patient) or an internal note (neither)."""
    if not staff_may_act(staff, thread):
        raise UsageError("this staff account may not write in another clinic's thread")
    _check_text(body, "note" if internal else "message", MAX_BODY_CHARS)
    now = services.clock.now()
    message = Message(
        thread_id=thread.id,
        author_kind="staff",
        author_id=staff.id,
        body=body,
        internal=internal,
        source=source,
        created_at=now,
    )
    session.add(message)
    thread.updated_at = now
    if not internal:
        stop_clock(thread)
        thread.patient_unread = True
        if thread.assigned_staff_id is None:
            thread.assigned_staff_id = staff.id
    await session.flush()
    await audit.record(
        session,
        f"staff:{staff.id}",
        "thread.staff_note" if internal else "thread.staff_message",
        "thread",
        thread.id,
        at=now,
        message_id=message.id,
    )
    if not internal:
        patient = await session.get(Patient, thread.patient_id)
        if patient is not None:
            await _tell_patient_new_message(session, services, thread, patient, now)
    return message


async def _tell_patient_new_message(
    session: AsyncSession, services: Services, thread: Thread, patient: Patient, now: datetime
) -> None:
    """Queue the PHI-free "you have a new message" notice, coalesced per patient."""
    if not _wants(patient, Kind.NEW_MESSAGE):
        return
    await enqueue(
        session,
        services.keyring,
        notice=Notice(kind=Kind.NEW_MESSAGE, thread_id=thread.id),
        clinic_id=thread.clinic_id,
        recipient=patient.email,
        now=now,
        language=patient.language,
        patient_id=patient.id,
        coalesce_key=f"new_message:{patient.id}",
        coalesce_seconds=services.config.delivery.coalesce_seconds,
    )


async def thread_for_patient(
    session: AsyncSession, thread_id: str, patient_id: str
) -> Thread | None:
    """The thread if it belongs to this patient; None otherwise (never says which)."""
    thread = await session.get(Thread, thread_id)
    if thread is None or thread.patient_id != patient_id:
        return None
    return thread


async def thread_for_staff(session: AsyncSession, staff: Staff, thread_id: str) -> Thread | None:
    """The thread if this staff member may act on it; None otherwise (never says which)."""
    thread = await session.get(Thread, thread_id)
    if thread is None or not staff_may_act(staff, thread):
        return None
    return thread


async def messages_of(
    session: AsyncSession, thread_id: str, *, include_internal: bool
) -> Sequence[Message]:
    """A thread's messages, oldest first; patients never get internal notes."""
    q = select(Message).where(Message.thread_id == thread_id)
    if not include_internal:
        q = q.where(Message.internal.is_(False))
    return (await session.scalars(q.order_by(Message.created_at, Message.id))).all()


async def assign(
    session: AsyncSession,
    services: Services,
    *,
    thread: Thread,
    staff: Staff,
    assignee: Staff | None,
) -> Thread:
    """Claim (assignee is the acting staff), assign to a colleague, or unassign (None)."""
    if not staff_may_act(staff, thread):
        raise UsageError("this staff account may not act on another clinic's thread")
    if assignee is not None and not staff_may_act(assignee, thread):
        raise UsageError("threads can only be assigned to active staff of the same clinic")
    now = services.clock.now()
    thread.assigned_staff_id = assignee.id if assignee else None
    thread.updated_at = now
    await session.flush()
    await audit.record(
        session,
        f"staff:{staff.id}",
        "thread.assign",
        "thread",
        thread.id,
        at=now,
        assignee_id=assignee.id if assignee else None,
    )
    return thread


async def mark_urgent(
    session: AsyncSession, services: Services, *, thread: Thread, staff: Staff
) -> Thread:
    """Staff flag a thread urgent: the urgent clock (if it shortens the deadline), the top
    of the queue, and an immediate notice to the pool and the fallback recipient."""
    if not staff_may_act(staff, thread):
        raise UsageError("this staff account may not act on another clinic's thread")
    if thread.urgent:
        return thread
    now = services.clock.now()
    clinic = await session.get(Clinic, thread.clinic_id)
    thread.urgent = True
    thread.updated_at = now
    if clinic is not None and thread.status == "open" and thread.sla_due_at is not None:
        _shorten_to_urgent(thread, clinic, now)
    await session.flush()
    await audit.record(session, f"staff:{staff.id}", "thread.urgent", "thread", thread.id, at=now)
    await _notify_pool(session, services, thread, True)
    return thread


async def close_thread(
    session: AsyncSession, services: Services, *, thread: Thread, staff: Staff
) -> Thread:
    """Close a thread; its clock stops. A later patient message reopens it."""
    if not staff_may_act(staff, thread):
        raise UsageError("this staff account may not act on another clinic's thread")
    now = services.clock.now()
    thread.status = "closed"
    thread.updated_at = now
    stop_clock(thread)
    await session.flush()
    await audit.record(session, f"staff:{staff.id}", "thread.close", "thread", thread.id, at=now)
    return thread


async def post_clinic_message(
    session: AsyncSession,
    services: Services,
    *,
    patient: Patient,
    clinic: Clinic,
    body: str,
    subject: str | None = None,
    thread: Thread | None = None,
    author_kind: str = "integration",
    author_id: str | None = None,
    source: str = "api",
    actor: str,
) -> Message:
    """A message from the clinic that no patient request started (e.g. a provider's note
    pushed by the EHR): opens a thread if none is given. No SLA clock: nobody owes a reply."""
    _check_text(body, "message", MAX_BODY_CHARS)
    now = services.clock.now()
    if thread is None:
        _check_text(subject or "", "subject", MAX_SUBJECT_CHARS)
        pool, _ = await route(session, clinic.id, "question")
        thread = Thread(
            clinic_id=clinic.id,
            patient_id=patient.id,
            pool_id=pool.id if pool else None,
            request_type="question",
            subject=subject or "",
            status="open",
            urgent=False,
            created_at=now,
            updated_at=now,
        )
        session.add(thread)
        await session.flush()
    elif thread.patient_id != patient.id:
        raise NotFoundError("no such thread for this patient")
    message = Message(
        thread_id=thread.id,
        author_kind=author_kind,
        author_id=author_id,
        body=body,
        internal=False,
        source=source,
        created_at=now,
    )
    session.add(message)
    thread.patient_unread = True
    thread.updated_at = now
    stop_clock(thread)
    await session.flush()
    await audit.record(
        session, actor, "thread.clinic_message", "thread", thread.id, at=now, message_id=message.id
    )
    await _tell_patient_new_message(session, services, thread, patient, now)
    return message

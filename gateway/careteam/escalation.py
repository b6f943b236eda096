"""SLA timers: warn the pool at 75% of the business time, escalate at the deadline.

Run by the scheduler on every tick. Each step is a compare-and-set on the thread
(``sla_warned_at IS NULL`` / ``sla_breached_at IS NULL``), so a tick that runs twice, or two
nodes during a leadership hand-over, cannot notify anyone twice. Everything sent is PHI-free:
the pool is told a thread id and a count, the patient only that the clinic will call if needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from gateway import audit
from gateway.careteam import digests
from gateway.models import Patient, Pool, Staff, Thread
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.services import Services

log = logging.getLogger("carebridge.sla")

BATCH = 200


@dataclass(frozen=True)
class TimerResult:
    warned: int = 0
    breached: int = 0


async def _claim(session: AsyncSession, thread_id: str, column: str, now: object) -> bool:
    col = getattr(Thread, column)
    result = await session.execute(
        update(Thread)
        .where(Thread.id == thread_id, col.is_(None), Thread.status == "open")
        .values({column: now})
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


async def escalation_contacts(
    session: AsyncSession, pool: Pool | None, clinic_id: str
) -> list[Staff]:
    """The pool's supervisor plus the clinic's on-call staff; clinic admins if neither exists."""
    people: dict[str, Staff] = {}
    if pool is not None and pool.supervisor_id:
        sup = await session.get(Staff, pool.supervisor_id)
        if sup is not None and sup.active:
            people[sup.id] = sup
    clinic_staff: Sequence[Staff] = (
        await session.scalars(
            select(Staff).where(Staff.clinic_id == clinic_id, Staff.active.is_(True))
        )
    ).all()
    for member in clinic_staff:
        if (member.preferences or {}).get("on_call"):
            people[member.id] = member
    if not people:
        for member in clinic_staff:
            if member.role == "clinic_admin":
                people[member.id] = member
    return list(people.values())


async def _warn(session: AsyncSession, services: Services, thread: Thread) -> None:
    now = services.clock.now()
    pool = await session.get(Pool, thread.pool_id) if thread.pool_id else None
    members = list(await digests.pool_members(session, pool.id)) if pool else []
    if not members:
        # A pool nobody works (or no pool): the warning must still reach someone.
        members = await escalation_contacts(session, pool, thread.clinic_id)
    for member in members:
        await enqueue(
            session,
            services.keyring,
            notice=Notice(
                kind=Kind.SLA_WARNING,
                thread_id=thread.id,
                pool_id=thread.pool_id,
                urgent_count=1 if thread.urgent else 0,
                expected_reply_at=thread.sla_due_at,
            ),
            clinic_id=thread.clinic_id,
            recipient=member.email,
            now=now,
            staff_id=member.id,
        )
    await audit.record(
        session, "system", "thread.sla_warning", "thread", thread.id, at=now, notified=len(members)
    )


async def _breach(session: AsyncSession, services: Services, thread: Thread) -> None:
    now = services.clock.now()
    pool = await session.get(Pool, thread.pool_id) if thread.pool_id else None
    contacts = await escalation_contacts(session, pool, thread.clinic_id)
    for person in contacts:
        await enqueue(
            session,
            services.keyring,
            notice=Notice(
                kind=Kind.SLA_BREACH,
                thread_id=thread.id,
                pool_id=thread.pool_id,
                urgent_count=1 if thread.urgent else 0,
            ),
            clinic_id=thread.clinic_id,
            recipient=person.email,
            now=now,
            staff_id=person.id,
        )
    patient = await session.get(Patient, thread.patient_id)
    if patient is not None:
        await enqueue(
            session,
            services.keyring,
            notice=Notice(kind=Kind.SLA_BREACH_PATIENT, thread_id=thread.id),
            clinic_id=thread.clinic_id,
            recipient=patient.email,
            now=now,
            language=patient.language,
            patient_id=patient.id,
        )
    services.metrics.sla_breaches.inc()
    await audit.record(
        session, "system", "thread.sla_breach", "thread", thread.id, at=now, notified=len(contacts)
    )
    log.warning("SLA breach thread=%s pool=%s", thread.id, thread.pool_id)


async def _open_threads_due(
    session: AsyncSession,
    at: InstrumentedAttribute[datetime | None],
    done: InstrumentedAttribute[datetime | None],
    now: datetime,
) -> Sequence[Thread]:
    """Open threads whose ``at`` moment has come and whose ``done`` mark is not set yet."""
    q = (
        select(Thread)
        .where(Thread.status == "open", at.is_not(None), at <= now, done.is_(None))
        .order_by(at)
        .limit(BATCH)
    )
    return (await session.scalars(q)).all()


async def run_sla_timers(services: Services) -> TimerResult:
    """Send every warning and breach notice that is due now. Safe to run at any frequency."""
    now = services.clock.now()
    warned = breached = 0
    async with services.transaction() as session:
        for thread in await _open_threads_due(
            session, Thread.sla_due_at, Thread.sla_breached_at, now
        ):
            if await _claim(session, thread.id, "sla_breached_at", now):
                # A thread past its deadline is not warned as well: the breach says it all.
                await _claim(session, thread.id, "sla_warned_at", now)
                await _breach(session, services, thread)
                breached += 1
        for thread in await _open_threads_due(
            session, Thread.sla_warn_at, Thread.sla_warned_at, now
        ):
            if await _claim(session, thread.id, "sla_warned_at", now):
                await _warn(session, services, thread)
                warned += 1
    return TimerResult(warned=warned, breached=breached)

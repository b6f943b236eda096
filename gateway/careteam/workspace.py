"""What the staff workspace shows: a clinic's pools at a glance, a pool's queue, a thread with
what a clinician needs beside it, and the few settings staff change from their pages.

The web routes in :mod:`gateway.web.staff` stay thin: they check who is asking, parse forms
and render; the reads live here, named for what each page needs. Staff see their own clinic
only, an operator any clinic: every read here is keyed by the clinic of the pool, thread or
result asked for, never by the patient alone (a patient may have been at several clinics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.careteam import pools, sla, threads
from gateway.models import Clinic, Message, Patient, Pool, QuickReply, Result, Staff, Thread


@dataclass(frozen=True)
class PoolSummary:
    """One line of the staff home page."""

    pool: Pool
    open: int
    urgent: int
    overdue: int
    mine: int


@dataclass(frozen=True)
class PoolWorkload:
    """A pool's open work in numbers, for integrations watching the queues."""

    clinic_slug: str
    pool: Pool
    open: int
    urgent: int
    unassigned: int
    breached: int
    next_due_at: datetime | None


@dataclass(frozen=True)
class QueueRow:
    thread: Thread
    due_local: str
    overdue: bool
    assignee: str


@dataclass(frozen=True)
class PoolQueue:
    clinic: Clinic | None
    rows: list[QueueRow]


@dataclass(frozen=True)
class ThreadView:
    """Everything the thread page shows beside the thread itself."""

    clinic: Clinic | None
    patient: Patient | None
    pool: Pool | None
    messages: Sequence[Message]
    names: dict[str, str]
    colleagues: list[Staff]
    quick_replies: list[QuickReply]
    held_results: list[Result]


def local(when: datetime | None, clinic: Clinic | None) -> str:
    """A time in the clinic's own timezone, as staff read it."""
    if when is None:
        return ""
    tz = sla.parse_timezone(clinic.timezone if clinic else "UTC")
    return when.astimezone(tz).strftime("%a %d %b %H:%M %Z")


async def staff_member(session: AsyncSession, staff_id: str) -> Staff | None:
    return await session.get(Staff, staff_id)


async def staff_names(session: AsyncSession, ids: set[str | None]) -> dict[str, str]:
    """Staff display names by id, for queues and message authors."""
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    rows = await session.scalars(select(Staff).where(Staff.id.in_(wanted)))
    return {m.id: m.name for m in rows}


async def clinic_id_by_slug(session: AsyncSession, slug: str) -> str | None:
    if not slug:
        return None
    return await session.scalar(select(Clinic.id).where(Clinic.slug == slug))


async def clinic_for(
    session: AsyncSession, me: Staff, clinic_id: str | None = None
) -> Clinic | None:
    """The clinic a page is about: always the staff member's own unless an operator."""
    wanted = clinic_id if me.role == "operator" and clinic_id else me.clinic_id
    return await session.get(Clinic, wanted) if wanted else None


# -- home and queues ---------------------------------------------------------------------


def _own(queue: Sequence[Thread], pool: Pool) -> list[Thread]:
    """Only the pool's own clinic's threads, even if a thread ever pointed at a pool of
    another clinic (routing rules are data an admin edits)."""
    return [t for t in queue if t.clinic_id == pool.clinic_id]


async def pool_summaries(
    session: AsyncSession, clinic_id: str, staff_id: str, now: datetime
) -> list[PoolSummary]:
    """Each pool of a clinic with its open, urgent, overdue and my-own thread counts."""
    rows = []
    for pool in await pools.pools_of(session, clinic_id):
        queue = _own(await pools.queue(session, pool.id), pool)
        rows.append(
            PoolSummary(
                pool=pool,
                open=len(queue),
                urgent=sum(1 for t in queue if t.urgent),
                overdue=sum(1 for t in queue if t.sla_due_at and t.sla_due_at <= now),
                mine=sum(1 for t in queue if t.assigned_staff_id == staff_id),
            )
        )
    return rows


async def pool_workloads(
    session: AsyncSession, now: datetime, *, org_id: str | None = None
) -> list[PoolWorkload]:
    """Every pool's open work (of one organisation, if given), by clinic then pool."""
    q = select(Pool, Clinic.slug).join(Clinic, Clinic.id == Pool.clinic_id)
    if org_id is not None:
        q = q.where(Clinic.org_id == org_id)
    out = []
    for pool, clinic_slug in (await session.execute(q.order_by(Clinic.slug, Pool.slug))).all():
        open_ = (
            Thread.pool_id == pool.id,
            Thread.clinic_id == pool.clinic_id,
            Thread.status == "open",
        )
        counts = (
            await session.execute(
                select(
                    func.count(),
                    func.count().filter(Thread.urgent.is_(True)),
                    func.count().filter(Thread.assigned_staff_id.is_(None)),
                    func.count().filter(Thread.sla_due_at <= now),
                    func.min(Thread.sla_due_at),
                ).where(*open_)
            )
        ).one()
        out.append(PoolWorkload(clinic_slug, pool, *counts))
    return out


async def pool_for_staff(session: AsyncSession, staff: Staff, pool_id: str) -> Pool | None:
    """The pool if this staff member may see it (their clinic's, or any for an operator)."""
    pool = await session.get(Pool, pool_id)
    if pool is None or (staff.role != "operator" and pool.clinic_id != staff.clinic_id):
        return None
    return pool


async def pool_queue(
    session: AsyncSession, pool: Pool, now: datetime, *, include_closed: bool = False
) -> PoolQueue:
    """A pool's queue as staff read it: deadlines in the clinic's time, assignees by name."""
    clinic = await session.get(Clinic, pool.clinic_id)
    queue = _own(await pools.queue(session, pool.id, include_closed=include_closed), pool)
    names = await staff_names(session, {t.assigned_staff_id for t in queue})
    rows = [
        QueueRow(
            thread=t,
            due_local=local(t.sla_due_at, clinic),
            overdue=bool(t.sla_due_at and t.sla_due_at <= now),
            assignee=names.get(t.assigned_staff_id or "", ""),
        )
        for t in queue
    ]
    return PoolQueue(clinic, rows)


# -- a thread ----------------------------------------------------------------------------


async def thread_view(session: AsyncSession, thread: Thread) -> ThreadView:
    """The thread page's content: every message (internal notes too), the colleagues it can
    be assigned to, the clinic's quick replies and the patient's results this clinic holds."""
    clinic = await session.get(Clinic, thread.clinic_id)
    patient = await session.get(Patient, thread.patient_id)
    messages = await threads.messages_of(session, thread.id, include_internal=True)
    names = await staff_names(session, {m.author_id for m in messages if m.author_kind == "staff"})
    colleagues = list(
        await session.scalars(
            select(Staff)
            .where(Staff.clinic_id == thread.clinic_id, Staff.active.is_(True))
            .order_by(Staff.created_at)
        )
    )
    replies = list(await pools.quick_replies(session, thread.clinic_id))
    held = list(
        await session.scalars(
            select(Result)
            .where(
                # The thread's clinic only: a patient enrolled at (or moved between) several
                # clinics has results at each, and one clinic never sees another's.
                Result.patient_id == thread.patient_id,
                Result.clinic_id == thread.clinic_id,
                Result.released_at.is_(None),
            )
            .order_by(Result.created_at)
        )
    )
    pool = await session.get(Pool, thread.pool_id) if thread.pool_id else None
    return ThreadView(clinic, patient, pool, messages, names, colleagues, replies, held)


async def result_for_staff(session: AsyncSession, staff: Staff, result_id: str) -> Result | None:
    """The result if it belongs to this staff member's clinic (any clinic for an operator)."""
    result = await session.get(Result, result_id)
    if result is None or (staff.role != "operator" and result.clinic_id != staff.clinic_id):
        return None
    return result


# -- settings staff change from their pages ----------------------------------------------


async def set_staff_email_replies(
    session: AsyncSession, clinic: Clinic, *, enabled: bool, actor: str
) -> None:
    """Whether staff may answer patients by replying to notification emails; audited on change."""
    if clinic.staff_email_replies != enabled:
        clinic.staff_email_replies = enabled
        await audit.record(
            session, actor, "clinic.staff_email_replies", "clinic", clinic.id, enabled=enabled
        )


async def save_preferences(
    session: AsyncSession, me: Staff, *, digest: str, urgent_only: bool, on_call: bool, actor: str
) -> None:
    """A staff member's digest timing, urgent-only digests, and on-call SLA breach notices."""
    me.preferences = {
        **(me.preferences or {}),
        "digest": digest,
        "urgent_only": urgent_only,
        "on_call": on_call,
    }
    await audit.record(session, actor, "staff.preferences", "staff", me.id)

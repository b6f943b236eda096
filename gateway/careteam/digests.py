"""Staff digests: "3 new messages in Refills, 1 urgent", coalesced per person and pool.

Staff are told that work is waiting, never what it is: the notice carries counts and a pool id
only. Each staff member has at most one queued digest per pool; a new message bumps its counts
instead of adding an email. ``Staff.preferences["digest"]`` sets how long a digest gathers
before it is sent:

- ``"immediate"`` (default): after the delivery coalescing window (``delivery.coalesce_seconds``)
- ``"hourly"``: at the top of the next hour
- ``"daily"``: at 07:00 UTC the next morning
- ``"off"``: no digests (SLA warnings still reach the pool)

``Staff.preferences["urgent_only"] = true`` limits digests to urgent messages.

Urgent work ignores these preferences: an urgent message reaches every member at once, even
one whose digests are off, and the clinic's fallback recipient too. A message in a pool with
no active member goes to the fallback recipient (:func:`fallback_recipient`) as an
"unwatched request" notice, so nothing lands where nobody is told.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import Clinic, Notification, Pool, PoolMember, Staff, Thread
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.services import Services

log = logging.getLogger("carebridge.digests")

DIGEST_MODES = ("immediate", "hourly", "daily", "off")


def send_time(mode: str, now: datetime, coalesce_seconds: int) -> datetime:
    if mode == "hourly":
        return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if mode == "daily":
        morning = now.replace(hour=7, minute=0, second=0, microsecond=0)
        return morning if morning > now else morning + timedelta(days=1)
    return now + timedelta(seconds=coalesce_seconds)


def coalesce_key(staff_id: str, pool_id: str) -> str:
    return f"digest:{staff_id}:{pool_id}"


async def pool_members(session: AsyncSession, pool_id: str) -> Sequence[Staff]:
    return (
        await session.scalars(
            select(Staff)
            .join(PoolMember, PoolMember.staff_id == Staff.id)
            .where(PoolMember.pool_id == pool_id, Staff.active.is_(True))
            .order_by(Staff.created_at)
        )
    ).all()


async def _bump(session: AsyncSession, key: str, urgent: bool, now: datetime) -> bool:
    """Add one (urgent) message to the queued digest with ``key``; False if there is none.

    A compare-and-set on ``state = 'queued'``: if a delivery worker claimed the row meanwhile,
    nothing is changed and the caller queues a fresh digest, so no message goes uncounted.
    """
    row = await session.scalar(
        select(Notification)
        .where(Notification.coalesce_key == key, Notification.state == "queued")
        .order_by(Notification.created_at.desc())
        .limit(1)
    )
    if row is None:
        return False
    ctx = dict(row.context)
    ctx["count"] = int(ctx.get("count", 0)) + 1
    ctx["urgent_count"] = int(ctx.get("urgent_count", 0)) + (1 if urgent else 0)
    # An urgent message pulls a gathering digest forward to now.
    send_at = min(row.next_attempt_at, now) if urgent else row.next_attempt_at
    result = await session.execute(
        update(Notification)
        .where(Notification.id == row.id, Notification.state == "queued")
        .values(context=ctx, next_attempt_at=send_at)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    await session.refresh(row)
    return True


async def _note_one(
    session: AsyncSession,
    services: Services,
    member: Staff,
    pool: Pool,
    urgent: bool,
    now: datetime,
) -> bool:
    """Count one message in ``member``'s digest of ``pool``; False when their settings say no."""
    prefs = member.preferences or {}
    mode = str(prefs.get("digest", "immediate"))
    if not urgent and (mode == "off" or prefs.get("urgent_only")):
        return False
    key = coalesce_key(member.id, pool.id)
    if await _bump(session, key, urgent, now):
        return True
    row = await enqueue(
        session,
        services.keyring,
        notice=Notice(
            kind=Kind.STAFF_DIGEST, count=1, urgent_count=1 if urgent else 0, pool_id=pool.id
        ),
        clinic_id=pool.clinic_id,
        recipient=member.email,
        now=now,
        staff_id=member.id,
        coalesce_key=key,
    )
    # Urgent work is not held back by an hourly, daily or "off" preference.
    row.next_attempt_at = (
        now if urgent else send_time(mode, now, services.config.delivery.coalesce_seconds)
    )
    return True


async def note_new_message(
    session: AsyncSession, services: Services, *, pool: Pool, urgent: bool
) -> set[str]:
    """Count one new patient message in the pool's digests; the ids of the staff it reached."""
    now = services.clock.now()
    reached = set()
    for member in await pool_members(session, pool.id):
        if await _note_one(session, services, member, pool, urgent, now):
            reached.add(member.id)
    log.debug("digest pool=%s reached=%d urgent=%s", pool.id, len(reached), urgent)
    return reached


FALLBACK_ROLES = ("clinic_admin", "provider")


async def fallback_recipient(session: AsyncSession, clinic: Clinic) -> Staff | None:
    """Who is told about requests nobody watches: the clinic's chosen fallback while active
    and of the clinic, else its first active clinic admin, else its first active provider."""
    if clinic.fallback_staff_id:
        chosen = await session.get(Staff, clinic.fallback_staff_id)
        if chosen is not None and chosen.active and chosen.clinic_id == clinic.id:
            return chosen
    candidates = (
        await session.scalars(
            select(Staff)
            .where(
                Staff.clinic_id == clinic.id,
                Staff.active.is_(True),
                or_(*(Staff.role == r for r in FALLBACK_ROLES)),
            )
            .order_by(Staff.created_at)
        )
    ).all()
    for role in FALLBACK_ROLES:
        for staff in candidates:
            if staff.role == role:
                return staff
    return None


async def note_unwatched(
    session: AsyncSession,
    services: Services,
    *,
    clinic: Clinic,
    thread: Thread,
    pool: Pool | None,
    urgent: bool,
) -> Staff | None:
    """Tell the fallback recipient that ``thread`` waits where nobody watches; who was told.

    Regardless of digest settings: this is the last person who can notice. Notices for one
    pool gather for the coalescing window ("3 requests are waiting"); urgent ones go now.
    """
    fallback = await fallback_recipient(session, clinic)
    if fallback is None:
        log.warning(
            "clinic %s: request %s unwatched and no fallback recipient", clinic.id, thread.id
        )
        return None
    now = services.clock.now()
    row = await enqueue(
        session,
        services.keyring,
        notice=Notice(
            kind=Kind.UNWATCHED_REQUEST,
            urgent_count=1 if urgent else 0,
            thread_id=thread.id,
            pool_id=pool.id if pool else None,
        ),
        clinic_id=clinic.id,
        recipient=fallback.email,
        now=now,
        staff_id=fallback.id,
        coalesce_key=f"{Kind.UNWATCHED_REQUEST}:{fallback.id}:{pool.id if pool else '-'}",
        coalesce_seconds=services.config.delivery.coalesce_seconds,
    )
    if urgent:
        row.next_attempt_at = min(row.next_attempt_at, now)
    log.info(
        "unwatched request %s pool=%s told fallback %s",
        thread.id,
        row.context.get("pool_id"),
        fallback.id,
    )
    return fallback


async def note_urgent_to_fallback(
    session: AsyncSession, services: Services, *, clinic: Clinic, pool: Pool, reached: set[str]
) -> Staff | None:
    """An urgent message in a watched pool: the fallback recipient hears of it at once too."""
    fallback = await fallback_recipient(session, clinic)
    if fallback is None or fallback.id in reached:
        return None
    await _note_one(session, services, fallback, pool, True, services.clock.now())
    return fallback

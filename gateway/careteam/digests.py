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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import Notification, Pool, PoolMember, Staff
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


async def note_new_message(
    session: AsyncSession, services: Services, *, pool: Pool, urgent: bool
) -> int:
    """Count one new patient message in the pool's digests; returns how many staff it reached."""
    now = services.clock.now()
    reached = 0
    for member in await pool_members(session, pool.id):
        prefs = member.preferences or {}
        mode = str(prefs.get("digest", "immediate"))
        if mode == "off" or (prefs.get("urgent_only") and not urgent):
            continue
        key = coalesce_key(member.id, pool.id)
        reached += 1
        if await _bump(session, key, urgent, now):
            continue
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
        # Urgent work is not held back by an hourly or daily preference.
        row.next_attempt_at = (
            now if urgent else send_time(mode, now, services.config.delivery.coalesce_seconds)
        )
    log.debug("digest pool=%s reached=%d urgent=%s", pool.id, reached, urgent)
    return reached

"""The notification table as a queue: claims with leases, state changes, backoff, dead letter.

States: ``queued`` -> ``sending`` (claimed) -> ``sent`` | ``deferred`` (retry later) |
``bounced`` (5xx, no retry) | ``failed`` (dead letter: still failing after
``[delivery] max_age_hours``) | ``cancelled`` (the patient switched the kind off).

Claims: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` lets many workers on many nodes
claim disjoint rows; on SQLite the write transaction starts with ``BEGIN IMMEDIATE`` (see
:mod:`gateway.db`), so exactly one claimer runs at a time. A claim is a lease: a worker that
dies mid-send leaves its rows ``sending`` until ``claimed_until`` passes, then any worker
claims them again (at-least-once delivery).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import DeliveryConfig
from gateway.errors import NotFoundError, UsageError
from gateway.models import Notification
from gateway.models.outbound import NOTIFICATION_STATES

TERMINAL = ("sent", "bounced", "failed", "cancelled")
RETRYABLE = ("deferred", "failed", "bounced")


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(Notification.state.in_(("queued", "deferred")), Notification.next_attempt_at <= now),
        and_(Notification.state == "sending", Notification.claimed_until < now),
    )


async def claim(
    session: AsyncSession, cfg: DeliveryConfig, *, worker: str, now: datetime, limit: int
) -> list[Notification]:
    """Claim up to ``limit`` due rows for ``worker`` (in the caller's transaction)."""
    q = select(Notification).where(_due(now)).order_by(Notification.next_attempt_at).limit(limit)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = list(await session.scalars(q))
    for row in rows:
        row.state = "sending"
        row.claimed_by = worker
        row.claimed_until = now + timedelta(seconds=cfg.lease_seconds)
        row.attempts += 1
        if row.expires_at is None:
            row.expires_at = row.created_at + timedelta(hours=cfg.max_age_hours)
    await session.flush()
    return rows


def backoff(attempts: int, cfg: DeliveryConfig, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter in [75%, 100%]: each delay still exceeds the last."""
    exponent = min(max(attempts - 1, 0), 30)
    delay = min(cfg.max_backoff_seconds, cfg.base_backoff_seconds * 2**exponent)
    return timedelta(seconds=delay * rng.uniform(0.75, 1.0))


async def load(session: AsyncSession, ids: list[str]) -> list[Notification]:
    """Bring a batch of rows into the session in one query; while the caller holds the
    list, ``_owned`` finds them in the identity map instead of asking once per row."""
    if not ids:
        return []
    return list(await session.scalars(select(Notification).where(Notification.id.in_(ids))))


async def _owned(session: AsyncSession, notification_id: str, worker: str) -> Notification | None:
    """The row if ``worker`` still holds its claim (a lease that ran out may be someone else's)."""
    row = await session.get(Notification, notification_id)
    if row is None or row.state != "sending" or row.claimed_by != worker:
        return None
    return row


def _release(row: Notification, state: str, error: str | None) -> None:
    row.state = state
    row.claimed_by = None
    row.claimed_until = None
    row.last_error = error


async def record_sent(
    session: AsyncSession, sent: Sequence[tuple[str, datetime]], *, worker: str
) -> None:
    """Mark ``(notification id, accepted at)`` pairs sent, in one statement.

    The common case of every round, so it skips the ORM: one executemany UPDATE that only
    touches rows this worker still holds (a lease that ran out may be someone else's)."""
    if not sent:
        return
    table = cast(Table, Notification.__table__)
    # A Core statement on the table: given a list, the ORM would switch to "bulk UPDATE by
    # primary key", which cannot add the claimed_by/state conditions.
    await session.execute(
        update(table)
        .where(
            table.c.id == bindparam("nid"),
            table.c.claimed_by == worker,
            table.c.state == "sending",
        )
        .values(
            state="sent",
            sent_at=bindparam("accepted"),
            claimed_by=None,
            claimed_until=None,
            last_error=None,
        ),
        [{"nid": nid, "accepted": at} for nid, at in sent],
    )


async def record_failure(
    session: AsyncSession,
    notification_id: str,
    *,
    worker: str,
    error: str,
    permanent: bool,
    now: datetime,
    cfg: DeliveryConfig,
    rng: random.Random,
    dead: bool = False,
) -> Notification | None:
    """Bounce (permanent), dead-letter (too old, or ``dead``: retrying cannot help) or defer
    with backoff. ``error`` must be PHI-free: it is shown to operators."""
    row = await _owned(session, notification_id, worker)
    if row is None:
        return None
    if permanent:
        _release(row, "bounced", error)
    elif dead or (row.expires_at is not None and now >= row.expires_at):
        _release(row, "failed", error)
    else:
        _release(row, "deferred", error)
        row.next_attempt_at = now + backoff(row.attempts, cfg, rng)
    return row


async def record_cancelled(
    session: AsyncSession, notification_id: str, *, worker: str, reason: str
) -> Notification | None:
    row = await _owned(session, notification_id, worker)
    if row is not None:
        _release(row, "cancelled", reason)
    return row


# -- operators --------------------------------------------------------------------------------
async def status(session: AsyncSession, now: datetime) -> dict[str, object]:
    result = await session.execute(
        select(Notification.state, func.count()).group_by(Notification.state)
    )
    counts = {str(state): int(n) for state, n in result.all()}
    oldest = await session.scalar(
        select(func.min(Notification.created_at)).where(
            Notification.state.in_(("queued", "deferred", "sending"))
        )
    )
    return {
        "counts": {s: int(counts.get(s, 0)) for s in NOTIFICATION_STATES},
        "oldest_pending_seconds": int((now - oldest).total_seconds()) if oldest else 0,
    }


def check_state(state: str | None) -> None:
    if state is not None and state not in NOTIFICATION_STATES:
        raise UsageError(f"unknown state {state!r}; use one of {', '.join(NOTIFICATION_STATES)}")


async def list_rows(
    session: AsyncSession, *, state: str | None = None, limit: int = 50
) -> Sequence[Notification]:
    check_state(state)
    q = select(Notification).order_by(Notification.created_at.desc()).limit(limit)
    if state:
        q = q.where(Notification.state == state)
    return (await session.scalars(q)).all()


async def get(session: AsyncSession, notification_id: str) -> Notification:
    row = await session.get(Notification, notification_id)
    if row is None:
        raise NotFoundError(f"no notification {notification_id!r}; see 'carebridge queue list'")
    return row


async def retry(
    session: AsyncSession,
    *,
    ids: Sequence[str] = (),
    state: str | None = None,
    now: datetime,
    cfg: DeliveryConfig,
) -> int:
    """Queue rows again now, with a fresh dead-letter deadline. Only retryable states move."""
    if not ids and state is None:
        raise UsageError("name notification ids, or --state deferred|failed|bounced")
    if state is not None and state not in RETRYABLE:
        raise UsageError(f"only {', '.join(RETRYABLE)} rows can be retried")
    q = update(Notification).where(Notification.state.in_(RETRYABLE))
    if ids:
        for nid in ids:
            await get(session, nid)  # a clear error for a mistyped id
        q = q.where(Notification.id.in_(list(ids)))
    if state is not None:
        q = q.where(Notification.state == state)
    result = await session.execute(
        q.values(
            state="queued",
            next_attempt_at=now,
            expires_at=now + timedelta(hours=cfg.max_age_hours),
            claimed_by=None,
            claimed_until=None,
        ).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


async def purge(
    session: AsyncSession, *, states: Sequence[str], older_than: timedelta, now: datetime
) -> int:
    """Delete finished rows (never queued, sending or deferred ones) older than a cutoff."""
    for s in states:
        if s not in TERMINAL:
            raise UsageError(f"only finished rows can be purged ({', '.join(TERMINAL)})")
    result = await session.execute(
        delete(Notification)
        .where(Notification.state.in_(list(states)), Notification.created_at < now - older_than)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))

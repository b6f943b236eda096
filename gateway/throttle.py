"""Attempt counters with lockout and exponential backoff (sign-in, online enrolment, resets).

Counters are keyed by a blind index of what was typed (an address, an IP), never the value
itself, and are kept whether or not an account exists: the lockout a stranger sees for an
unknown address is the same as for a real one, so the throttle cannot be used to enumerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import Throttle


@dataclass(frozen=True)
class Policy:
    """``limit`` attempts per ``window``; beyond that, locked for ``base * 2**excess``."""

    scope: str
    limit: int
    window: timedelta
    base_lock: timedelta
    max_lock: timedelta


SIGN_IN = Policy("signin", 5, timedelta(minutes=15), timedelta(minutes=1), timedelta(hours=1))
# Failed sign-ins from one client address, whichever accounts they try: one address trying
# many accounts (password spraying) is slowed even though each account sees few failures.
SIGN_IN_CLIENT = Policy(
    "signin-ip", 20, timedelta(minutes=15), timedelta(minutes=1), timedelta(hours=1)
)
ENROL = Policy("enrol", 5, timedelta(hours=1), timedelta(minutes=15), timedelta(hours=6))
ENROL_CLIENT = Policy("enrol-ip", 20, timedelta(hours=1), timedelta(minutes=15), timedelta(hours=6))
RESET = Policy("reset", 3, timedelta(hours=1), timedelta(minutes=15), timedelta(hours=6))


async def _row(session: AsyncSession, policy: Policy, key: str, now: datetime) -> Throttle:
    row = await session.scalar(
        select(Throttle).where(Throttle.scope == policy.scope, Throttle.key == key)
    )
    if row is None:
        row = Throttle(scope=policy.scope, key=key, count=0, window_start=now)
        session.add(row)
        await session.flush()
    return row


async def locked_until(
    session: AsyncSession, policy: Policy, key: str, now: datetime
) -> datetime | None:
    """When the lock on ``key`` ends, or None if attempts are allowed now."""
    row = await session.scalar(
        select(Throttle).where(Throttle.scope == policy.scope, Throttle.key == key)
    )
    if row is None or row.locked_until is None or row.locked_until <= now:
        return None
    return row.locked_until


async def hit(session: AsyncSession, policy: Policy, key: str, now: datetime) -> datetime | None:
    """Count one attempt (a failure, or any enrolment); return the lock end if now locked."""
    row = await _row(session, policy, key, now)
    if row.window_start + policy.window <= now and (
        row.locked_until is None or row.locked_until <= now
    ):
        row.count, row.window_start = 0, now
    row.count += 1
    excess = row.count - policy.limit
    if excess > 0:
        lock = min(policy.base_lock * (2 ** (excess - 1)), policy.max_lock)
        row.locked_until = now + lock
        return row.locked_until
    return None


async def reset(session: AsyncSession, policy: Policy, key: str) -> None:
    """Forget the failures for ``key`` (after a successful sign-in)."""
    row = await session.scalar(
        select(Throttle).where(Throttle.scope == policy.scope, Throttle.key == key)
    )
    if row is not None:
        row.count, row.locked_until = 0, None


async def purge_stale(session: AsyncSession, now: datetime, older_than: timedelta) -> int:
    """Delete counters untouched for ``older_than`` and not locked (the retention job's)."""
    result = await session.execute(
        delete(Throttle)
        .where(
            Throttle.window_start < now - older_than,
            (Throttle.locked_until.is_(None)) | (Throttle.locked_until <= now),
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)

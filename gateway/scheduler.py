"""The scheduler part: reminders, SLA timers, token expiry and retention, on one node only.

Several nodes may run ``carebridge serve`` against one PostgreSQL store; exactly one of them
runs the scheduler's jobs. Leadership is a session-level ``pg_try_advisory_lock`` taken on a
dedicated connection and held for as long as that connection lives: if the leader's process
or connection dies, PostgreSQL releases the lock and the next node to tick takes over. The
leader checks its connection on every tick, so a leader that lost its connection stops acting
at once. On SQLite (one embedded node) the scheduler always leads.

The jobs themselves are idempotent (compare-and-set claims), so even the brief overlap of a
hand-over cannot send a reminder or an SLA notice twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import throttle
from gateway.careteam import appointments, escalation
from gateway.models import Appointment, IdempotencyRecord, Token
from gateway.portal import accounts
from gateway.services import Services

# Longest throttle window is an hour and the longest lock six; a day is safely past both.
THROTTLE_RETENTION = timedelta(days=1)

log = logging.getLogger("carebridge.scheduler")

# The advisory lock id that names "the scheduler" in this database.
LEADER_LOCK = 0x5C4ED01E


@dataclass(frozen=True)
class TickResult:
    leader: bool
    reminders: int = 0
    warned: int = 0
    breached: int = 0
    purged: int = 0


class LeaderLock:
    """Session-level advisory lock on a connection kept open while leading."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.conn: AsyncConnection | None = None
        self.backend_pid: int | None = None

    @property
    def embedded(self) -> bool:
        return self.services.engine.dialect.name != "postgresql"

    async def hold(self) -> bool:
        """True if this node leads now (keeping or taking the lock)."""
        if self.embedded:
            return True
        if self.conn is not None:
            try:
                await self.conn.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("scheduler lost its leader connection; standing down")
                await self.release()
        return await self._acquire()

    async def _acquire(self) -> bool:
        conn = await self.services.engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK})
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            # Autobegun transaction: end it so the connection is idle, not idle-in-transaction.
            await conn.commit()
        except Exception:
            await _close_quietly(conn)
            raise
        if not got:
            await _close_quietly(conn)
            return False
        self.conn, self.backend_pid = conn, int(pid)
        log.info("scheduler leadership taken (backend pid %s)", pid)
        return True

    async def release(self) -> None:
        conn, self.conn, self.backend_pid = self.conn, None, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK})
            await conn.commit()
        await _close_quietly(conn)


async def _close_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:
        # A killed connection cannot be returned cleanly; drop it from the pool.
        with contextlib.suppress(Exception):
            await conn.invalidate()


async def purge_expired(services: Services) -> int:
    """Retention: drop rows whose only purpose has passed."""
    now = services.clock.now()
    cfg = services.config.scheduler
    purged = 0
    async with services.transaction() as session:
        for stmt in (
            delete(Token).where(Token.expires_at < now - timedelta(days=cfg.token_grace_days)),
            delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < now),
            delete(Appointment).where(
                Appointment.starts_at < now - timedelta(days=cfg.retention_days)
            ),
        ):
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            purged += int(getattr(result, "rowcount", 0) or 0)
        # Expired web sessions and idle rate-limit counters are refused or reset anyway;
        # purging keeps the tables small.
        purged += await accounts.purge_expired(session, services)
        purged += await throttle.purge_stale(session, now, THROTTLE_RETENTION)
    return purged


class SchedulerPart:
    """Runs :meth:`tick` every ``scheduler.tick_seconds`` in the serve loop."""

    name = "scheduler"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.lock = LeaderLock(services)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def tick(self) -> TickResult:
        """One round: lead if possible, then run every job that is due."""
        if not await self.lock.hold():
            return TickResult(leader=False)
        reminders = await appointments.send_due_reminders(self.services)
        timers = await escalation.run_sla_timers(self.services)
        purged = await purge_expired(self.services)
        return TickResult(
            leader=True,
            reminders=reminders,
            warned=timers.warned,
            breached=timers.breached,
            purged=purged,
        )

    async def _loop(self) -> None:
        interval = self.services.config.scheduler.tick_seconds
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception:
                # One failed round (a database blip) must not end the scheduler.
                log.exception("scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval)

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.lock.release()

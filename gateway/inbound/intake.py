"""The one intake path: SMTP and IMAP both hand raw bytes to :class:`Intake`.

Two steps, so that nothing acknowledged is ever lost and durability stays cheap:

1. :meth:`Intake.receive` checks the header block (capped, and each header value capped by a
   linear scan, so no header parser ever sees an outlier), deduplicates by Message-ID and
   stores the raw message encrypted, with its routing target, through a group commit. Only when
   that commit returns does SMTP answer 250 (or IMAP mark the message processed).
2. Stored messages are then processed in batches (``gateway/inbound/processing.py``): parsed
   (bounded in time), authenticated, routed to a handler, and the outcomes applied (state,
   quarantine row, audit) in one transaction per batch. A crash between the two steps leaves
   ``received`` rows: :meth:`Intake.recover` processes them at the next start, and every
   running node sweeps for rows left unprocessed longer than ``adopt_after_seconds`` (their
   node died, and in scale-out may never come back) and adopts them. Each outcome is applied
   exactly once however many nodes try, because it is committed, under a row lock, with the
   state change that marks it done.

On SQLite, the intake's own write transactions take turns on one in-process lock, so they never
meet in SQLite's busy handler (which sleeps), and reads (RCPT checks, loading a batch) use a
separate query-only engine in autocommit mode, so they never take the write lock at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import event, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gateway import db
from gateway.groupcommit import GroupCommitter
from gateway.inbound import parsing, plugins, processing
from gateway.inbound.auth import ReceivedEnvelope
from gateway.inbound.handling import Outcome, RoutingTable
from gateway.inbound.parsing import MalformedMessage
from gateway.inbound.processing import Prepared, state_of
from gateway.inbound.routing import Target
from gateway.inbound.sqlitewriter import SqliteInserter
from gateway.models import InboundMessage
from gateway.models.types import new_id
from gateway.services import Services

log = logging.getLogger("carebridge.inbound")

__all__ = ["Intake", "Refused", "Stored", "state_of"]

PROCESS_BATCH = 10
# Processing waits for a lull this long between stored messages, but puts itself off at most
# MAX_DEFER at a time: after that it runs until a lull comes or its queue is empty.
QUIET_SECONDS = 0.05
MAX_DEFER_SECONDS = 5.0
ADOPT_LIMIT = 1000  # rows one sweep adopts at most


@dataclass(frozen=True)
class Stored:
    """Committed durably: ``inbound_ids`` are new rows, ``duplicates`` were already here."""

    inbound_ids: tuple[str, ...]
    duplicates: int


@dataclass(frozen=True)
class Refused:
    """Not accepted (a permanent problem with the message itself)."""

    reason: str


ReceiveOutcome = Stored | Refused


@dataclass(frozen=True)
class _Pending:
    rows: list[dict[str, Any]]  # inbound_message column values


def _read_only_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # autocommit: a SELECT takes no write lock
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=1")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _reader(services: Services) -> tuple[async_sessionmaker[AsyncSession], AsyncEngine | None]:
    if not db.is_sqlite(services.engine):
        return services.sessions, None
    # Not db.create_engine: its hook begins every transaction IMMEDIATE (a write lock).
    engine = create_async_engine(services.config.store_url)
    event.listen(engine.sync_engine, "connect", _read_only_pragmas)
    db.bind_keyring(engine, services.keyring)
    return db.sessionmaker(engine), engine


class Intake:
    """The intake engine: ``carebridge serve`` builds one, shared by its SMTP and IMAP parts.

    The quarantine's release commands (CLI and admin page) build a short-lived one of their
    own to re-run processing on the released message, and close it when done.

    ``routing`` is the handlers' table; by default the one installed under the
    ``carebridge.routing`` entry point (:func:`gateway.inbound.plugins.load_routing`).
    """

    def __init__(self, services: Services, routing: RoutingTable | None = None) -> None:
        self.services = services
        self.routing = routing if routing is not None else plugins.load_routing()
        services.executors.parse.preload(
            r.extract.__module__ for r in self.routing.routes if r.extract is not None
        )
        services.executors.parse.warm()
        cfg = services.config.inbound
        self._committer: GroupCommitter[_Pending, tuple[list[str], int]] = GroupCommitter(
            self._write_batch, cfg.group_commit_max
        )
        self.read_sessions, self._read_engine = _reader(services)
        self._inserter = (
            SqliteInserter(services.config.store_url, services.keyring)
            if db.is_sqlite(services.engine)
            else None
        )
        self._turns = services.turns  # shared with the delivery part's writers
        self._slots = asyncio.Semaphore(max(1, cfg.process_concurrency))
        # Small processing batches: each holds the writer's turn while senders may queue.
        self._batch = PROCESS_BATCH
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()  # in the queue or in the batch being processed
        self._processor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._last_receive = 0.0
        self._deferred_since: float | None = None
        self._closing = False
        self._recovered = False

    @property
    def commits(self) -> int:
        return self._committer.batches

    # -- step 1: durable store ---------------------------------------------------------------
    async def receive(
        self,
        raw: bytes,
        *,
        source: str,
        targets: Sequence[Target],
        envelope: ReceivedEnvelope | None = None,
        process: bool = True,
        dedupe_scope: str | None = None,
    ) -> ReceiveOutcome:
        """Store ``raw`` once per target; return only after the commit (or raise on failure).

        Duplicates are recognised by Message-ID per target; ``dedupe_scope`` replaces the
        target in that key where targets may change between deliveries (an IMAP message
        fetched again after its token expired must still be recognised)."""
        cfg = self.services.config.inbound
        try:
            headers = parsing.header_block(raw, cfg.max_header_bytes)
            parsing.check_header_values(
                headers,
                max_address=cfg.max_address_header_bytes,
                max_value=cfg.max_header_value_bytes,
            )
            message_id = parsing.message_id_of(headers)
        except MalformedMessage as exc:
            self.services.metrics.intake.labels(outcome="refused").inc()
            return Refused(exc.reason)
        now = self.services.clock.now()
        env = envelope.to_json() if envelope is not None else None
        rows = [
            {
                "id": new_id(),
                "message_id_hash": parsing.dedupe_key(
                    message_id, raw, f"{dedupe_scope}:{i}" if dedupe_scope else t.key
                ),
                "source": source,
                "route": t.route,
                "token_id": t.token_id,
                "clinic_id": t.clinic_id,
                "raw": raw,
                "size": len(raw),
                "state": "received",
                "auth": {},
                "envelope": env,
                "attempts": 0,
                "received_at": now,
            }
            for i, t in enumerate(targets)
        ]
        self._last_receive = time.monotonic()
        ids, duplicates = await self._committer.submit(_Pending(rows))
        if duplicates:
            self.services.metrics.intake.labels(outcome="duplicate").inc(duplicates)
        if process:
            for inbound_id in ids:
                self.schedule(inbound_id)
        return Stored(tuple(ids), duplicates)

    async def _write_batch(self, batch: list[_Pending]) -> list[tuple[list[str], int]]:
        try:
            return await self._write(batch)
        except IntegrityError:
            # Another node stored the same Message-ID meanwhile: redo one by one, so only
            # the true duplicates are reported as such.
            return [(await self._write([p]))[0] for p in batch]

    async def _write(self, batch: list[_Pending]) -> list[tuple[list[str], int]]:
        if self._inserter is not None:
            async with self._turns.urgent():
                inserted = await self._inserter.insert([r for p in batch for r in p.rows])
            out: list[tuple[list[str], int]] = []
            for p in batch:
                new = [str(r["id"]) for r in p.rows if r["id"] in inserted]
                out.append((new, len(p.rows) - len(new)))
            return out
        hashes = [str(r["message_id_hash"]) for p in batch for r in p.rows]
        results: list[tuple[list[str], int]] = []
        async with self._turns.urgent(), self.services.transaction() as session:
            existing: set[str] = set()
            for i in range(0, len(hashes), 500):
                found = await session.scalars(
                    select(InboundMessage.message_id_hash).where(
                        InboundMessage.message_id_hash.in_(hashes[i : i + 500])
                    )
                )
                existing.update(h for h in found.all() if h)
            fresh: list[dict[str, Any]] = []
            for pending in batch:
                ids: list[str] = []
                dup = 0
                for row in pending.rows:
                    if row["message_id_hash"] in existing:
                        dup += 1
                        continue
                    existing.add(row["message_id_hash"])
                    fresh.append(row)
                    ids.append(row["id"])
                results.append((ids, dup))
            if fresh:
                # One executemany, no unit of work: the rows are new and never read back here.
                await session.execute(insert(InboundMessage), fresh)
            # The store is audited when each message is processed (inbound.<state>), which
            # every stored message is, after a crash too: one audit row per message, not two.
        return results

    # -- step 2: authenticate, route, handle, in batches ------------------------------------
    def schedule(self, inbound_id: str) -> None:
        """Queue a stored message for processing in the background."""
        if inbound_id in self._queued:
            return
        self._queued.add(inbound_id)
        self._queue.append(inbound_id)
        if self._processor is None or self._processor.done():
            self._processor = asyncio.create_task(self._process_loop())

    async def _yield_to_senders(self) -> None:
        """Processing is nobody's wait: while SMTP sessions are storing messages, let them
        have the CPU. But a steady stream has no lulls, so processing puts itself off at most
        ``MAX_DEFER_SECONDS``; then it keeps its turn (batch after batch, the senders' commits
        still going first) until a real lull or an empty queue ends the stretch."""
        while time.monotonic() - self._last_receive < QUIET_SECONDS and not self._closing:
            if self._deferred_since is None:
                self._deferred_since = time.monotonic()
            if time.monotonic() - self._deferred_since > MAX_DEFER_SECONDS:
                return
            await asyncio.sleep(QUIET_SECONDS)
        self._deferred_since = None

    async def _process_loop(self) -> None:
        while self._queue and not self._closing:
            await self._yield_to_senders()
            batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self.process_batch(batch)
            except Exception as exc:  # never let one batch stop the others
                log.error("inbound batch of %d failed (%s)", len(batch), type(exc).__name__)
            finally:
                # Only now: a sweep during the batch must not queue the same rows again.
                self._queued.difference_update(batch)
        self._deferred_since = None

    async def drain(self) -> None:
        """Wait until every scheduled message has been processed."""
        while self._processor is not None and not self._processor.done():
            await asyncio.shield(self._processor)

    async def recover(self) -> int:
        """Process every message stored but not yet processed (after a crash or restart),
        then keep sweeping for messages other nodes left behind (:meth:`sweep`).

        Runs once per Intake however many parts share it."""
        if self._recovered:
            return 0
        self._recovered = True
        adopted = await self.sweep(stale=False)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="inbound-sweep")
        return adopted

    async def sweep(self, *, stale: bool = True) -> int:
        """Adopt and schedule ``received`` messages; return how many.

        ``stale``: only those stored more than ``adopt_after_seconds`` ago that no other node
        has adopted in that time (their storing node is gone, or far behind). A node adopts
        a row by stamping ``adopted_until`` under ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
        so sweeping nodes share a dead node's backlog instead of all taking all of it; if two
        nodes still process one row, the row lock in ``processing.apply_one`` lets one win.
        """
        cfg = self.services.config.inbound
        now = self.services.clock.now()
        query = (
            select(InboundMessage.id)
            .where(InboundMessage.state == "received")
            .order_by(InboundMessage.received_at)
        )
        if stale:  # at start-up: everything, as before the crash
            query = query.where(
                InboundMessage.received_at < now - timedelta(seconds=cfg.adopt_after_seconds),
                or_(InboundMessage.adopted_until.is_(None), InboundMessage.adopted_until < now),
            ).limit(ADOPT_LIMIT)
        if self._read_engine is not None:
            # SQLite: one node per store, and the queue already knows what it holds.
            async with self.read_sessions() as session:
                ids = list((await session.scalars(query)).all())
        else:
            async with self.services.transaction() as session:
                ids = list((await session.scalars(query.with_for_update(skip_locked=True))).all())
                ids = [i for i in ids if i not in self._queued]
                if ids:
                    await session.execute(
                        update(InboundMessage)
                        .where(InboundMessage.id.in_(ids))
                        .values(adopted_until=now + timedelta(seconds=cfg.adopt_after_seconds))
                    )
        fresh = [i for i in ids if i not in self._queued]
        for inbound_id in fresh:
            self.schedule(inbound_id)
        if fresh and stale:
            log.info("adopted %d stored messages left unprocessed", len(fresh))
        return len(fresh)

    async def _sweep_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.services.config.inbound.sweep_seconds)
            try:
                await self.sweep()
            except Exception as exc:  # the store is away: the next sweep tries again
                log.error("inbound sweep failed (%s)", type(exc).__name__)

    async def close(self) -> None:
        """Finish the commit and the batch in hand; what is still queued stays ``received``
        in the store and is processed at the next start, or by another node's sweep (a stop
        must not wait on a backlog)."""
        await self._committer.close()
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.drain()
        if self._read_engine is not None:
            await self._read_engine.dispose()
            self._read_engine = None
        if self._inserter is not None:
            self._inserter.close()
            self._inserter = None

    async def process(self, inbound_id: str) -> Outcome | None:
        """Process one stored message now; None if it was already processed."""
        return (await self.process_batch([inbound_id])).get(inbound_id)

    async def process_batch(self, ids: list[str]) -> dict[str, Outcome | None]:
        services = self.services
        async with self.read_sessions() as session:
            rows = (
                await session.execute(
                    select(
                        InboundMessage.id,
                        InboundMessage.raw,
                        InboundMessage.source,
                        InboundMessage.route,
                        InboundMessage.envelope,
                    ).where(InboundMessage.id.in_(ids), InboundMessage.state == "received")
                )
            ).all()

        async def prep(r: Any) -> Prepared:
            async with self._slots:
                env = ReceivedEnvelope.from_json(r.envelope)
                return await processing.prepare(
                    services, self.routing, r.id, r.raw, r.source, r.route, env
                )

        prepared = await asyncio.gather(*(prep(r) for r in rows))
        results: dict[str, Outcome | None] = {}
        retry: list[str] = []
        now = services.clock.now()
        async with self._turns.background(), services.transaction() as session:
            for p in prepared:
                outcome, again = await processing.apply_one(services, self.routing, session, p, now)
                results[p.inbound_id] = outcome
                if again:
                    retry.append(p.inbound_id)
        for inbound_id, outcome in results.items():
            if outcome is not None:
                services.metrics.intake.labels(outcome=state_of(outcome)).inc()
                log.info("inbound %s state=%s", inbound_id, state_of(outcome))
        for inbound_id in retry:
            self.schedule(inbound_id)
        return results

"""The one intake path: SMTP and IMAP both hand raw bytes to :class:`Intake`.

Two steps, so that nothing acknowledged is ever lost and durability stays cheap:

1. :meth:`Intake.receive` checks the header block (capped), deduplicates by Message-ID and
   stores the raw message encrypted, with its routing target, through a group commit. Only when
   that commit returns does SMTP answer 250 (or IMAP mark the message processed).
2. :meth:`Intake.process` then parses it fully (bounded in time), authenticates it, picks the
   handler from the routing table and applies the handler's outcome (state, quarantine row,
   metrics, audit) in one transaction. A crash between the two leaves a ``received`` row that
   :meth:`Intake.recover` processes at the next start; the outcome is applied exactly once,
   because it is committed together with the state change that marks the row done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.addresses import index_form
from gateway.errors import InvalidAddressError
from gateway.inbound import auth, parsing, routing
from gateway.inbound.auth import AuthVerdict, Envelope
from gateway.inbound.groupcommit import GroupCommitter
from gateway.inbound.parsing import MalformedMessage, Sender
from gateway.inbound.routing import Target
from gateway.models import Clinic, InboundMessage, QuarantineItem, Token
from gateway.models.types import new_id
from gateway.services import Services
from handlers.base import (
    BounceRecorded,
    Confirmed,
    Context,
    Filed,
    Handler,
    Ignore,
    Keep,
    Outcome,
    Quarantine,
)

log = logging.getLogger("carebridge.inbound")

MAX_ATTEMPTS = 3  # a message whose handler keeps failing is quarantined, not retried forever


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
    rows: list[InboundMessage]


def state_of(outcome: Outcome) -> str:
    match outcome:
        case Filed():
            return "filed"
        case Confirmed():
            return "confirmed"
        case BounceRecorded():
            return "bounce"
        case Quarantine():
            return "quarantined"
        case Ignore():
            return "ignored"
        case Keep():
            return "kept"
    raise AssertionError(outcome)


def _detail_of(outcome: Outcome) -> str:
    match outcome:
        case Quarantine(reason=r) | Ignore(reason=r) | Keep(reason=r):
            return r
        case BounceRecorded(severity=sev, status=st):
            return f"{sev} {st}".strip()
        case Confirmed(terms_agreed=agreed):
            return "email+terms" if agreed else "email"
        case Filed():
            return ""
    raise AssertionError(outcome)


class Intake:
    """The intake engine of one running system (one per :class:`Services`)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        cfg = services.config.inbound
        self._committer: GroupCommitter[_Pending, tuple[list[str], int]] = GroupCommitter(
            self._write_batch, cfg.group_commit_max
        )
        self._slots = asyncio.Semaphore(max(1, cfg.process_concurrency))
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
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
        envelope: Envelope | None = None,
        process: bool = True,
    ) -> ReceiveOutcome:
        """Store ``raw`` once per target; return only after the commit (or raise on failure)."""
        cfg = self.services.config.inbound
        try:
            headers = parsing.header_block(raw, cfg.max_header_bytes)
            message_id = parsing.message_id_of(headers)
        except MalformedMessage as exc:
            self.services.metrics.intake.labels(outcome="refused").inc()
            return Refused(exc.reason)
        now = self.services.clock.now()
        env = envelope.to_json() if envelope is not None else None
        rows = [
            InboundMessage(
                id=new_id(),
                message_id_hash=parsing.dedupe_key(message_id, raw, t.key),
                source=source,
                route=t.route,
                token_id=t.token_id,
                clinic_id=t.clinic_id,
                raw=raw,
                size=len(raw),
                state="received",
                auth={},
                envelope=env,
                attempts=0,
                received_at=now,
            )
            for t in targets
        ]
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
        hashes = [r.message_id_hash for p in batch for r in p.rows if r.message_id_hash]
        results: list[tuple[list[str], int]] = []
        async with self.services.transaction() as session:
            existing: set[str] = set()
            for i in range(0, len(hashes), 500):
                chunk = hashes[i : i + 500]
                found = await session.scalars(
                    select(InboundMessage.message_id_hash).where(
                        InboundMessage.message_id_hash.in_(chunk)
                    )
                )
                existing.update(h for h in found.all() if h)
            for pending in batch:
                ids: list[str] = []
                dup = 0
                for row in pending.rows:
                    if row.message_id_hash in existing:
                        dup += 1
                        continue
                    if row.message_id_hash:
                        existing.add(row.message_id_hash)
                    session.add(row)
                    ids.append(row.id)
                results.append((ids, dup))
            await session.flush()
            for ids, _ in results:
                for inbound_id in ids:
                    await audit.record(session, "system", "inbound.receive", "inbound", inbound_id)
        return results

    # -- step 2: authenticate, route, handle ----------------------------------------------------
    def schedule(self, inbound_id: str) -> None:
        """Process a stored message in the background (bounded concurrency)."""
        self._idle.clear()
        task = asyncio.create_task(self._process_slot(inbound_id))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _process_slot(self, inbound_id: str) -> None:
        async with self._slots:
            try:
                await self.process(inbound_id)
            except Exception as exc:  # never let one message stop the others
                log.error("inbound %s: processing failed (%s)", inbound_id, type(exc).__name__)

    async def drain(self) -> None:
        """Wait until every scheduled message has been processed."""
        while self._tasks:
            await self._idle.wait()

    async def recover(self) -> int:
        """Process every message stored but not yet processed (after a crash or restart).

        Runs once per Intake however many parts share it."""
        if self._recovered:
            return 0
        self._recovered = True
        async with self.services.sessions() as session:
            ids = (
                await session.scalars(
                    select(InboundMessage.id)
                    .where(InboundMessage.state == "received")
                    .order_by(InboundMessage.received_at)
                )
            ).all()
        for inbound_id in ids:
            self.schedule(inbound_id)
        return len(ids)

    async def close(self) -> None:
        await self._committer.close()
        await self.drain()

    async def process(self, inbound_id: str) -> Outcome | None:
        """Authenticate, route and handle one stored message; None if already processed."""
        services = self.services
        cfg = services.config
        async with services.sessions() as session:
            row = await session.get(InboundMessage, inbound_id)
            if row is None or row.state != "received":
                return None
            raw, source, route_name = row.raw, row.source, row.route
            envelope = Envelope.from_json(row.envelope)
        try:
            msg = await parsing.parse(
                raw,
                max_header_bytes=cfg.inbound.max_header_bytes,
                deadline=cfg.inbound.parse_timeout_seconds,
            )
        except MalformedMessage as exc:
            return await self._finish(inbound_id, Quarantine(exc.reason), None, None, None, None)
        sender = parsing.from_sender(msg)
        verdict = await auth.authenticate(cfg, raw, msg, sender.domain if sender else "", envelope)
        route = routing.route_named(route_name)
        handler, automated = routing.choose_handler(route, msg, envelope, source)
        if handler is None:
            outcome: Outcome = Quarantine("no_recipient", "no address of ours in the message")
            return await self._finish(inbound_id, outcome, None, verdict, sender, None)
        try:
            return await self._finish(
                inbound_id, None, handler, verdict, sender, (msg, envelope, automated)
            )
        except Exception as exc:
            return await self._failed(inbound_id, handler.name, exc)

    async def _finish(
        self,
        inbound_id: str,
        fixed: Outcome | None,
        handler: Handler | None,
        verdict: AuthVerdict | None,
        sender: Sender | None,
        parsed: tuple[EmailMessage, Envelope, str | None] | None,
    ) -> Outcome | None:
        services = self.services
        now = services.clock.now()
        async with services.transaction() as session:
            row = await session.get(InboundMessage, inbound_id, with_for_update=True)
            if row is None or row.state != "received":
                return None  # another worker or node got there first
            row.sender_index = _sender_index(services, sender, row)
            if verdict is not None:
                row.auth = verdict.to_json()
            outcome = fixed
            if outcome is None:
                assert handler is not None and parsed is not None and verdict is not None
                msg, envelope, automated = parsed
                token = await session.get(Token, row.token_id) if row.token_id else None
                if token is not None and token.expires_at <= now:
                    token = None
                clinic = await session.get(Clinic, row.clinic_id) if row.clinic_id else None
                ctx = Context(
                    services=services,
                    session=session,
                    inbound=row,
                    msg=msg,
                    sender=sender,
                    verdict=verdict,
                    envelope=envelope,
                    token=token,
                    clinic=clinic,
                    now=now,
                    automated=automated,
                )
                row.handler = handler.name
                # A savepoint: a handler that fails leaves no half-written thread behind.
                async with session.begin_nested():
                    outcome = await handler.handle(ctx)
            await self._apply(session, row, outcome)
        services.metrics.intake.labels(outcome=state_of(outcome)).inc()
        log.info(
            "inbound %s route=%s handler=%s state=%s detail=%s",
            inbound_id,
            row.route,
            row.handler or "-",
            row.state,
            row.detail or "-",
        )
        return outcome

    async def _apply(self, session: AsyncSession, row: InboundMessage, outcome: Outcome) -> None:
        row.state = state_of(outcome)
        row.detail = _detail_of(outcome)[:200]
        row.processed_at = self.services.clock.now()
        details: dict[str, object] = {"state": row.state, "route": row.route}
        if isinstance(outcome, Filed):
            row.thread_id = outcome.thread_id
            details.update(thread_id=outcome.thread_id, message_id=outcome.message_id)
        elif isinstance(outcome, Quarantine):
            item = QuarantineItem(
                inbound_id=row.id,
                reason=outcome.reason,
                detail=outcome.detail[:500] or None,
                state="held",
                created_at=row.processed_at,
            )
            session.add(item)
            await session.flush()
            details.update(reason=outcome.reason, quarantine_id=item.id)
        elif isinstance(outcome, Ignore):
            details.update(reason=outcome.reason)
            if outcome.drop_raw:
                row.raw = b""
        elif isinstance(outcome, BounceRecorded):
            details.update(notification_id=outcome.notification_id, severity=outcome.severity)
        elif isinstance(outcome, Confirmed):
            details.update(patient_id=outcome.patient_id)
        await audit.record(
            session,
            "system",
            f"inbound.{row.state}",
            "inbound",
            row.id,
            at=row.processed_at,
            **details,
        )

    async def _failed(self, inbound_id: str, handler_name: str, exc: Exception) -> Outcome | None:
        # The exception text may quote the message: log its type only.
        log.error("inbound %s: handler %s raised %s", inbound_id, handler_name, type(exc).__name__)
        async with self.services.transaction() as session:
            row = await session.get(InboundMessage, inbound_id, with_for_update=True)
            if row is None or row.state != "received":
                return None
            row.attempts = (row.attempts or 0) + 1
            if row.attempts < MAX_ATTEMPTS:
                return None
            outcome = Quarantine("processing_error", f"{handler_name} raised {type(exc).__name__}")
            await self._apply(session, row, outcome)
        self.services.metrics.intake.labels(outcome="quarantined").inc()
        return outcome


def _sender_index(services: Services, sender: Sender | None, row: InboundMessage) -> str | None:
    address = sender.address if sender else Envelope.from_json(row.envelope).mail_from
    if not address:
        return None
    try:
        return services.keyring.blind_index(index_form(address), "inbound-sender")
    except InvalidAddressError:
        return None

"""Delivery workers: the ``serve`` loop's part that turns queued rows into sent email.

The loop claims a batch and mints its tokens in one short transaction; each claimed row is
then rendered, signed and sent outside any transaction (sends run concurrently, at most
``[delivery] per_domain_concurrency`` per recipient domain), and its outcome is recorded the
moment the relay answers, through a group commit: every outcome that arrives while one
commit runs goes into the next, ahead of claims in the writer's queue.

A crash after the relay's 250 but before that commit sends the row again once its lease
runs out: at-least-once, never lost. Recording at once keeps that window to one commit, and
sends take turns for the stretch from their DATA command to that commit
(:class:`CommitPoint`, ``[delivery] max_unconfirmed``, default 1): connecting, MAIL and RCPT
run side by side, but a crash finds at most that many messages the relay may have taken
unrecorded, and re-sends only those (a second copy with the same Message-ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.careteam import staff_replies
from gateway.groupcommit import GroupCommitter
from gateway.models import Clinic, DkimKey, Notification, Patient, Pool, Staff
from gateway.outbound import dkim, headers, links, queue
from gateway.outbound.notify import OPTIONAL_KINDS, PATIENT_KINDS, Kind, Notice
from gateway.outbound.render import EmailContext, Renderer, brand_color, format_when
from gateway.outbound.transport import DeliveryError, OutboundEnvelope, Transport, build_transport
from gateway.services import Services

log = logging.getLogger("carebridge.delivery")

SLOW_RECORD_SECONDS = 0.5


@dataclass
class Job:
    """One claimed notification with everything needed to build it outside a transaction."""

    notification_id: str
    created_at: datetime
    domain_key: str
    recipient: str
    tls_required: bool
    context: EmailContext
    from_name: str
    from_address: str
    msg_id: str
    addressing: links.Addressing
    keys: list[dkim.SigningKey]
    lease_until: datetime
    sent_at: datetime | None = None
    error: DeliveryError | None = None
    dead: bool = False  # our own bug (e.g. a missing template): retrying will not help
    point: CommitPoint | None = None


class CommitPoint:
    """One send's place among the node's unconfirmed sends: taken just before DATA (from
    then on the relay may take the message), given back once the relay's answer is on disk.

    With ``[delivery] max_unconfirmed`` = 1 at most one message is ever accepted-but-not-
    recorded on a node, so a crash re-sends at most one message."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False

    async def enter(self) -> None:
        await self._slots.acquire()
        self._held = True

    def leave(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


@dataclass
class Round:
    jobs: list[Job] = field(default_factory=list)
    cancelled: int = 0


class DeliveryPart:
    name = "delivery"

    def __init__(self, services: Services, transport: Transport | None = None) -> None:
        self.services = services
        self.cfg = services.config.delivery
        self.transport = transport or build_transport(services.config)
        self.renderer = Renderer()
        self.keys = dkim.KeyCache()
        self.rng = random.Random()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._node = f"{socket.gethostname()[:30]}-{os.getpid()}-{secrets.token_hex(3)}"
        self._recorder: GroupCommitter[tuple[Job, str], None] = GroupCommitter(
            self._record_now, max_batch=500
        )
        self._unrecorded: list[Job] = []  # outcomes whose commit failed: the loop retries
        self._unconfirmed = asyncio.Semaphore(max(1, self.cfg.max_unconfirmed))

    # -- part life cycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._loop(f"{self._node}-0"), name="delivery")]

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._recorder.close()
        await self.transport.close()

    def wake(self) -> None:
        """New work was queued: an idle loop looks now instead of at the next poll."""
        self._wake.set()

    @property
    def max_in_flight(self) -> int:
        return max(1, self.cfg.workers) * max(1, self.cfg.claim_batch)

    async def _loop(self, worker: str) -> None:
        """Claim while there is room for more sends; each send records its own outcome.
        One claimer per node keeps SQLite's writer free; PostgreSQL nodes claim side by
        side (``SKIP LOCKED``)."""
        in_flight: set[asyncio.Task[bool]] = set()

        def done(task: asyncio.Task[bool]) -> None:
            in_flight.discard(task)
            self._wake.set()

        while not self._stopping or in_flight or self._unrecorded:
            # Cleared before looking, so work queued during the round is not slept through.
            self._wake.clear()
            retry, self._unrecorded = self._unrecorded, []
            room = 0 if self._stopping else self.max_in_flight - len(in_flight)
            try:
                jobs = await self._round(retry, worker, room)
            except Exception as exc:
                # Never the message: exceptions from drivers may quote values.
                log.error("delivery round failed: %s", type(exc).__name__)
                if self._stopping and not in_flight:
                    break  # unrecorded rows stay 'sending'; their leases run out: resent
                self._unrecorded = retry + self._unrecorded  # record them next round
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.poll_seconds)
                continue
            for job in jobs:
                task = asyncio.create_task(self._send_and_record(job, worker))
                in_flight.add(task)
                task.add_done_callback(done)
            if not jobs and not self._unrecorded:
                # Idle, or full: a finishing send or new work sets the event.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.poll_seconds)

    # -- rounds ---------------------------------------------------------------------------
    async def _round(self, outcomes: list[Job], worker: str, room: int) -> list[Job]:
        """One transaction: record ``outcomes``, then claim and prepare up to ``room`` rows."""
        if not outcomes and room <= 0:
            return []
        now = self.services.clock.now()
        async with self.services.turns.turn(), self.services.transaction() as session:
            if outcomes:
                await self._record(session, outcomes, worker, now)
            if room <= 0:
                return []
            claimed = await queue.claim(
                session, self.cfg, worker=worker, now=now, limit=min(room, self.cfg.claim_batch)
            )
            if not claimed:
                return []
            return (await self._prepare(session, claimed, worker, now)).jobs

    async def _send_and_record(self, job: Job, worker: str) -> bool:
        """Send, then commit the outcome at once; False if the commit failed (the loop
        records it in its next round; the row's lease keeps it from being sent again)."""
        job.point = CommitPoint(self._unconfirmed)
        try:
            await self._deliver(job)
            await self._recorder.submit((job, worker))
        except Exception as exc:
            log.error("recording a delivery outcome failed: %s", type(exc).__name__)
            self._unrecorded.append(job)
            return False
        finally:
            job.point.leave()
        return True

    async def _record_now(self, items: list[tuple[Job, str]]) -> list[None]:
        """The group commit of outcomes: first in the writer's queue, since each 250 not yet
        on disk is a message a crash would send twice."""
        by_worker: dict[str, list[Job]] = {}
        for job, worker in items:
            by_worker.setdefault(worker, []).append(job)
        now = self.services.clock.now()
        started = time.monotonic()
        async with self.services.turns.urgent():
            turn = time.monotonic()
            async with self.services.transaction() as session:
                for worker, jobs in by_worker.items():
                    await self._record(session, jobs, worker, now)
        took = time.monotonic() - started
        if took > SLOW_RECORD_SECONDS:
            # Every second of this is a window in which a crash would send these again.
            log.warning(
                "recording %d delivery outcomes took %.2fs (%.2fs waiting for the store's "
                "writer in this process)",
                len(items),
                took,
                turn - started,
            )
        return [None] * len(items)

    async def run_once(self, worker: str = "worker") -> int:
        """Claim, send and record one batch, then return how many rows it handled.

        For tests, the demo and the benchmark's sample; ``serve`` runs :meth:`_loop`."""
        jobs = await self._round([], worker, self.cfg.claim_batch)
        await asyncio.gather(*(self._send_and_record(job, worker) for job in jobs))
        retry, self._unrecorded = self._unrecorded, []
        await self._round(retry, worker, 0)
        return len(jobs)

    async def _prepare(
        self, session: AsyncSession, rows: list[Notification], worker: str, now: datetime
    ) -> Round:
        out = Round()
        clinics: dict[str, Clinic] = {}
        signing: dict[str, list[DkimKey]] = {}
        tokens = links.TokenBatch()
        for row in rows:
            clinic = clinics.get(row.clinic_id) or await session.get(Clinic, row.clinic_id)
            assert clinic is not None
            clinics[clinic.id] = clinic
            kind = Kind(row.kind)
            if await _switched_off(session, row, kind):
                await queue.record_cancelled(session, row.id, worker=worker, reason="unsubscribed")
                self.services.metrics.deliveries.labels(outcome="cancelled").inc()
                out.cancelled += 1
                continue
            notice = Notice.from_json(row.context)
            domain = links.sending_domain(clinic, self.services.config)
            key_rows = signing.get(clinic.id)
            if key_rows is None:
                key_rows = await dkim.active_keys(session, clinic.id, domain)
                if not key_rows:
                    log.warning("clinic %s had no DKIM keys for its domain: created", clinic.id)
                    key_rows = await dkim.ensure_domain_keys(session, clinic, now=now)
                signing[clinic.id] = key_rows
            addressing = await links.mint(
                session, self.services.config, row, clinic, now, batch=tokens
            )
            if row.staff_id and row.patient_id is None and notice.thread_id:
                addressing = await self._staff_reply_to(session, addressing, row, clinic, now)
            row.message_id = headers.message_id(row.id, domain)
            row.bounce_token_id = addressing.bounce_token_id
            pool_name = None
            if notice.pool_id:
                pool = await session.get(Pool, notice.pool_id)
                pool_name = pool.name if pool is not None else None
            ctx = EmailContext(
                audience="patient" if row.patient_id and kind in PATIENT_KINDS else "staff",
                kind=row.kind,
                lang=row.language,
                clinic_name=clinic.name,
                clinic_phone=clinic.phone,
                brand_color=brand_color(clinic.branding or {}),
                count=notice.count,
                urgent_count=notice.urgent_count,
                link=addressing.link,
                unsubscribe_link=addressing.unsubscribe_link,
                reply_allowed=addressing.reply_to is not None,
                expected_reply=format_when(notice.expected_reply_at, clinic.timezone, row.language),
                reopens=format_when(notice.reopens_at, clinic.timezone, row.language),
                pool_name=pool_name,
            )
            out.jobs.append(
                Job(
                    notification_id=row.id,
                    created_at=row.created_at,
                    domain_key=row.recipient_domain_hash,
                    recipient=row.recipient,
                    tls_required=clinic.tls_required,
                    context=ctx,
                    from_name=clinic.name,
                    from_address=f"{self.cfg.from_local_part}@{domain}",
                    msg_id=row.message_id,
                    addressing=addressing,
                    keys=[self.keys.get(k) for k in key_rows],
                    lease_until=row.claimed_until or now,
                )
            )
        await tokens.write(session)
        return out

    async def _staff_reply_to(
        self,
        session: AsyncSession,
        addressing: links.Addressing,
        row: Notification,
        clinic: Clinic,
        now: datetime,
    ) -> links.Addressing:
        """Staff notices about a thread may be answered by email where the clinic allows it
        (:mod:`gateway.careteam.staff_replies` decides, and mints the staff reply token)."""
        staff = await session.get(Staff, row.staff_id)
        thread_id = row.context.get("thread_id")
        if staff is None or not isinstance(thread_id, str):
            return addressing
        reply_to = await staff_replies.reply_address(
            session, self.services, clinic=clinic, staff=staff, thread_id=thread_id, now=now
        )
        return dataclasses.replace(addressing, reply_to=reply_to) if reply_to else addressing

    def build(self, job: Job) -> bytes:
        """Render, add headers and sign: the exact bytes that go on the wire."""
        rendered = self.renderer.render(job.context)
        message = headers.build(
            rendered,
            from_name=job.from_name,
            from_address=job.from_address,
            to=job.recipient,
            msg_id=job.msg_id,
            date=self.services.clock.now(),
            reply_to=job.addressing.reply_to,
            unsubscribe_link=job.addressing.unsubscribe_link,
        )
        started = time.perf_counter()
        signed = dkim.sign(message, job.keys)
        self.services.metrics.dkim_sign_seconds.observe(time.perf_counter() - started)
        return signed

    async def _deliver(self, job: Job) -> None:
        try:
            data = self.build(job)
        except Exception as exc:
            job.error = DeliveryError(
                f"cannot build message ({type(exc).__name__})", permanent=False
            )
            job.dead = True
            log.error("notification %s could not be built: %s", job.notification_id, job.error)
            return
        limit = self._limits.setdefault(
            job.domain_key, asyncio.Semaphore(max(1, self.cfg.per_domain_concurrency))
        )
        envelope = OutboundEnvelope(
            mail_from=job.addressing.mail_from,
            recipient=job.recipient,
            data=data,
            tls_required=job.tls_required,
            ident=job.notification_id,
            before_data=job.point.enter if job.point is not None else None,
        )
        async with limit:
            # Waiting for a slow domain may outlast the claim; once it could run out during
            # the send, another node may already be sending it: leave it (no duplicate).
            margin = timedelta(seconds=self.cfg.timeout_seconds)
            if self.services.clock.now() + margin >= job.lease_until:
                job.error = DeliveryError("claim nearly expired before sending", permanent=False)
                return
            try:
                await self.transport.send(envelope)
            except DeliveryError as exc:
                job.error = exc
                return
            except Exception as exc:
                job.error = DeliveryError(f"send: {type(exc).__name__}", permanent=False)
                return
        job.sent_at = self.services.clock.now()

    async def _record(
        self, session: AsyncSession, jobs: list[Job], worker: str, now: datetime
    ) -> None:
        metrics = self.services.metrics
        sent = [job for job in jobs if job.error is None]
        await queue.record_sent(
            session, [(job.notification_id, job.sent_at or now) for job in sent], worker=worker
        )
        for job in sent:
            assert job.sent_at is not None
            metrics.deliveries.labels(outcome="sent").inc()
            metrics.delivery_latency.observe(
                max(0.0, (job.sent_at - job.created_at).total_seconds())
            )
            log.debug("notification %s sent", job.notification_id)
        failed = [job for job in jobs if job.error is not None]
        batch = await queue.load(session, [job.notification_id for job in failed])
        for job in failed:
            assert job.error is not None
            row = await queue.record_failure(
                session,
                job.notification_id,
                worker=worker,
                error=str(job.error)[:500],
                permanent=job.error.permanent,
                dead=job.dead,
                now=now,
                cfg=self.cfg,
                rng=self.rng,
            )
            state = row.state if row is not None else "lost-lease"
            metrics.deliveries.labels(outcome=state).inc()
            log.info(
                "notification %s %s attempt=%s: %s",
                job.notification_id,
                state,
                row.attempts if row is not None else "?",
                job.error,
            )
            if row is not None and state == "bounced" and row.patient_id:
                await _mark_undeliverable(session, row.patient_id, str(job.error))
        del batch


async def _switched_off(session: AsyncSession, row: Notification, kind: Kind) -> bool:
    if row.patient_id is None or kind not in OPTIONAL_KINDS:
        return False
    patient = await session.get(Patient, row.patient_id)
    prefs = (patient.notification_prefs if patient is not None else None) or {}
    return prefs.get(str(kind), True) is False


async def _mark_undeliverable(session: AsyncSession, patient_id: str, error: str) -> None:
    """A 5xx at our own SMTP session produces no DSN, so note it here for the desk."""
    patient = await session.get(Patient, patient_id)
    if patient is not None:
        patient.deliverability = "policy" if " 5.7." in f" {error}" else "hard"

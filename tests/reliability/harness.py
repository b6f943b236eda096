"""Load, chaos and the final reckoning, shared by the crash, soak and scale-out suites.

- :class:`InboundLoad` sends replies over SMTP like a patient's mail server would: a message
  that did not get 250 (refused connection, reset, 4xx) is sent again later with the same
  Message-ID; every 250 goes into the ledger with its end-of-DATA-to-reply latency.
- :class:`NotificationLoad` asks for notifications the way the product does
  (``notify.enqueue`` in a transaction of its own) and ledgers each committed id.
- :func:`chaos` SIGKILLs a node at random moments and restarts it.
- :func:`reckon` compares the ledgers with the store and the sink: messages lost after 250,
  notifications never delivered, duplicates, corrupt rows, a broken audit chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import aiosmtplib
from sqlalchemy import func, select, text

from gateway import audit
from gateway.config import parse_config
from gateway.crypto import load_keyring
from gateway.models import Base, InboundMessage, Notification
from gateway.models.types import _EncryptedBase
from gateway.outbound import notify
from gateway.services import Services, open_services
from tests.reliability.procs import Node, Seeded
from tests.reliability.sink import Sink
from tests.reliability.stories import reply_mail

_NOTIFICATION_ID = re.compile(r"^<([0-9a-f]{32})\.")


class Pacer:
    """At most ``rate`` events per second overall (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.n = 0

    async def wait(self) -> None:
        if self.rate <= 0:
            return
        self.n += 1
        due = self.start + self.n / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class InboundLoad:
    nodes: list[Node]
    seeded: Seeded
    total: int
    rate: float = 0.0
    concurrency: int = 8
    accepted: dict[str, float] = field(default_factory=dict)  # Message-ID -> latency (s)
    accepted_at: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)

    async def run(self) -> None:
        work: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.total):
            work.put_nowait(i)
        pacer = Pacer(self.rate)
        await asyncio.gather(*(self._worker(w, work, pacer) for w in range(self.concurrency)))

    async def _worker(self, w: int, work: asyncio.Queue[int], pacer: Pacer) -> None:
        client: aiosmtplib.SMTP | None = None
        node_i = w
        while True:
            try:
                i = work.get_nowait()
            except asyncio.QueueEmpty:
                break
            await pacer.wait()
            _pid, sender, to = self.seeded.people[i % len(self.seeded.people)]
            mid = f"<load-{i}@patients.example>"
            _, raw = reply_mail(sender, to, f"reply number {i}", message_id=mid)
            while True:
                self.attempts += 1
                try:
                    if client is None:
                        node = self.nodes[node_i % len(self.nodes)]
                        client = aiosmtplib.SMTP(
                            hostname="127.0.0.1", port=node.smtp_port, timeout=10
                        )
                        await client.connect()
                    await client.mail(sender)
                    await client.rcpt(to)
                    started = time.monotonic()
                    await client.data(raw)
                    self.accepted[mid] = time.monotonic() - started
                    self.accepted_at[mid] = time.time()
                    break
                except aiosmtplib.SMTPResponseException as exc:
                    if 500 <= exc.code < 600:
                        self.refused.append(f"{mid} {exc.code}")
                        break
                    self.failures[f"{exc.code}"] += 1
                except (aiosmtplib.SMTPException, OSError) as exc:
                    self.failures[type(exc).__name__] += 1
                # Like an MTA: drop the connection, try another node shortly, same message.
                if client is not None:
                    client.close()
                client = None
                node_i += 1
                await asyncio.sleep(0.05)
        if client is not None:
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                client.close()


@dataclass
class NotificationLoad:
    services: Services
    seeded: Seeded
    total: int
    rate: float = 0.0
    enqueued: list[str] = field(default_factory=list)
    enqueued_at: dict[str, float] = field(default_factory=dict)
    retries: int = 0

    # Notifications committed per transaction: the product queues them from many requests at
    # once, and one SQLite write lock per notification would measure the harness, not carebridge.
    batch: int = 5

    async def run(self) -> None:
        pacer = Pacer(self.rate / self.batch if self.rate else 0)
        for start in range(0, self.total, self.batch):
            await pacer.wait()
            chunk = range(start, min(self.total, start + self.batch))
            while True:
                try:
                    ids = await self._enqueue(chunk)
                    break
                except Exception:  # the database was locked by a process that just died
                    self.retries += 1
                    await asyncio.sleep(0.05)
            now = time.time()
            for nid in ids:
                self.enqueued.append(nid)
                self.enqueued_at[nid] = now

    async def _enqueue(self, chunk: range) -> list[str]:
        ids = []
        async with self.services.transaction() as s:
            for i in chunk:
                pid, email, _ = self.seeded.people[i % len(self.seeded.people)]
                row = await notify.enqueue(
                    s,
                    self.services.keyring,
                    notice=notify.Notice(kind=notify.Kind.PASSWORD_RESET),
                    clinic_id=self.seeded.clinic_id,
                    recipient=email,
                    now=self.services.clock.now(),
                    patient_id=pid,
                )
                ids.append(row.id)
        return ids


async def chaos(
    node: Node, kills: int, rng: random.Random, *, up: tuple[float, float], done: asyncio.Event
) -> None:
    """Kill ``node`` ``kills`` times at random moments while the load runs, then leave it up."""
    for _ in range(kills):
        if node.proc is None:
            await node.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(*up))
        await node.kill()
    await node.start()


async def open_store(store_url: str, keys_file: Path) -> Services:
    cfg = parse_config({"store": {"url": store_url}, "keys": {"file": str(keys_file)}})
    return await open_services(cfg, keyring=load_keyring(keys_file))


async def wait_drained(services: Services, timeout: float, *, strict: bool = True) -> float:
    """Wait until no notification is pending and no inbound message is unprocessed.

    Not drained in time: raise, or (``strict=False``) return ``inf`` and let the reckoning
    report what was left."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        async with services.sessions() as s:
            pending = await s.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.state.in_(("queued", "sending", "deferred")))
            )
            unprocessed = await s.scalar(
                select(func.count())
                .select_from(InboundMessage)
                .where(InboundMessage.state == "received")
            )
        if not pending and not unprocessed:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    if not strict:
        return float("inf")
    raise TimeoutError(
        f"not drained after {timeout}s: {pending} pending, {unprocessed} unprocessed"
    )


@dataclass
class Reckoning:
    accepted: int
    stored: int
    lost: list[str]
    inbound_states: dict[str, int]
    notifications: int
    notification_states: dict[str, int]
    never_delivered: list[str]
    delivered: int
    duplicates: int
    # Copies of notifications claimed only once: two workers or nodes sent the same row.
    duplicates_without_reclaim: int
    max_copies: int
    integrity: str
    rows_decrypted: int
    audit_ok: bool
    audit_rows: int

    def lines(self) -> list[str]:
        return [
            f"inbound accepted (250): {self.accepted}; stored: {self.stored}; "
            f"lost after 250: {len(self.lost)}",
            f"inbound states: {self.inbound_states}",
            f"notifications: {self.notifications}; states: {self.notification_states}",
            f"delivered to the relay: {self.delivered}; never delivered: "
            f"{len(self.never_delivered)}; duplicates: {self.duplicates} "
            f"(most copies of one: {self.max_copies}; of rows claimed only once: "
            f"{self.duplicates_without_reclaim})",
            f"integrity_check: {self.integrity}; rows decrypted: {self.rows_decrypted}; "
            f"audit chain: {'ok' if self.audit_ok else 'BROKEN'} ({self.audit_rows} rows)",
        ]


def _mid(raw: bytes) -> str:
    return str(BytesHeaderParser(policy=compat32).parsebytes(raw).get("Message-ID", "")).strip()


async def reckon(services: Services, accepted: set[str], sinks: list[Sink]) -> Reckoning:
    stored: set[str] = set()
    async with services.sessions() as s:
        after = ""
        while True:
            rows = (
                await s.execute(
                    select(InboundMessage.id, InboundMessage.raw)
                    .where(InboundMessage.id > after)
                    .order_by(InboundMessage.id)
                    .limit(1000)
                )
            ).all()
            if not rows:
                break
            stored.update(_mid(raw) for _id, raw in rows)
            after = rows[-1][0]
        inbound_states = dict(
            (
                await s.execute(
                    select(InboundMessage.state, func.count()).group_by(InboundMessage.state)
                )
            ).all()
        )
        notes = (
            await s.execute(select(Notification.id, Notification.state, Notification.attempts))
        ).all()
        audit_result = await audit.verify(s)
    copies: Counter[str] = Counter()
    for sink in sinks:
        for m in sink.messages:
            found = _NOTIFICATION_ID.match(m.message_id)
            copies[found.group(1) if found else m.message_id] += 1
    never = [nid for nid, state, _a in notes if state != "cancelled" and copies[nid] == 0]
    once = {nid for nid, _s, attempts in notes if attempts <= 1}
    return Reckoning(
        accepted=len(accepted),
        stored=len(stored),
        lost=sorted(accepted - stored),
        inbound_states={str(k): int(v) for k, v in inbound_states.items()},
        notifications=len(notes),
        notification_states=dict(Counter(str(st) for _n, st, _a in notes)),
        never_delivered=never,
        delivered=sum(copies.values()),
        duplicates=sum(c - 1 for c in copies.values() if c > 1),
        duplicates_without_reclaim=sum(c - 1 for n, c in copies.items() if c > 1 and n in once),
        max_copies=max(copies.values(), default=0),
        integrity=await integrity(services),
        rows_decrypted=await decrypt_everything(services),
        audit_ok=audit_result.ok,
        audit_rows=audit_result.checked,
    )


async def integrity(services: Services) -> str:
    if services.engine.dialect.name != "sqlite":
        return "n/a (PostgreSQL)"
    async with services.engine.connect() as conn:
        rows = (await conn.execute(text("PRAGMA integrity_check"))).scalars().all()
    return ", ".join(str(r) for r in rows)


async def decrypt_everything(services: Services) -> int:
    """Read every encrypted value of every table through the key ring; raises if one fails."""
    n = 0
    async with services.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, _EncryptedBase)]
            if not cols:
                continue
            result = await conn.stream(select(*cols))
            async for _row in result:
                n += 1
    return n

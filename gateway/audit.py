"""The audit log: append-only, hash-chained, PHI-free.

Each row's hash covers its content and the previous row's hash, so changing, deleting or
reordering any row breaks every hash after it. Appends are serialised: on SQLite by the
``BEGIN IMMEDIATE`` write lock, on PostgreSQL by a transaction-scoped advisory lock; ``seq`` is
the primary key, so a forked chain cannot be committed either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import AuditEvent, utcnow

GENESIS = "0" * 64
_PG_AUDIT_LOCK = 0x0CA5EB1D


def _canonical(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details: dict[str, Any],
    prev_hash: str,
) -> bytes:
    doc = {
        "seq": seq,
        "at": at.isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "details": details,
        "prev": prev_hash,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def row_hash(ev: AuditEvent) -> str:
    data = _canonical(
        ev.seq, ev.at, ev.actor, ev.action, ev.object_type, ev.object_id, ev.details, ev.prev_hash
    )
    return hashlib.sha256(data).hexdigest()


async def record(
    session: AsyncSession,
    actor: str,
    action: str,
    object_type: str = "",
    object_id: str = "",
    *,
    at: datetime | None = None,
    **details: Any,
) -> AuditEvent:
    """Append one event in the caller's transaction. ``details`` must hold ids, never PHI."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    last = (
        await session.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
        )
    ).first()
    seq, prev = (1, GENESIS) if last is None else (last[0] + 1, last[1])
    when = at or utcnow()
    ev = AuditEvent(
        seq=seq,
        at=when,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        details=details,
        prev_hash=prev,
    )
    ev.hash = row_hash(ev)
    session.add(ev)
    await session.flush()
    return ev


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""


async def _iter_events(session: AsyncSession, batch: int = 1000) -> AsyncIterator[AuditEvent]:
    after = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.seq > after)
                .order_by(AuditEvent.seq)
                .limit(batch)
            )
        ).all()
        if not rows:
            return
        for ev in rows:
            yield ev
        after = rows[-1].seq


async def verify(session: AsyncSession) -> VerifyResult:
    """Walk the chain in order and report the first row whose hash or link is wrong."""
    prev, expected_seq, n = GENESIS, 1, 0
    async for ev in _iter_events(session):
        n += 1
        if ev.seq != expected_seq:
            return VerifyResult(False, n, ev.seq, f"row {expected_seq} is missing")
        if ev.prev_hash != prev:
            return VerifyResult(False, n, ev.seq, "link to the previous row is wrong")
        if row_hash(ev) != ev.hash:
            return VerifyResult(False, n, ev.seq, "content does not match its hash")
        prev, expected_seq = ev.hash, ev.seq + 1
    return VerifyResult(True, n)

"""What operators and clinic admins see of the gateway's health, read from the store.

One set of queries feeds the admin dashboard pages and the scrape-time Prometheus gauges, so
the two can never disagree. Everything returned is PHI-free: ids, states, counts, clinic slugs,
times, and deferral reasons that are scrubbed of anything looking like an address.

A ``Scope`` limits every query to one clinic (clinic admins) or none (operators).
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import (
    AuditEvent,
    Clinic,
    ClinicConnectionRequest,
    DkimKey,
    Enrolment,
    InboundMessage,
    Notification,
    Patient,
    PoolMember,
    QuarantineItem,
    Staff,
    Thread,
)
from gateway.models.outbound import NOTIFICATION_STATES
from gateway.outbound.notify import Kind

WAITING_STATES = ("queued", "deferred")
_ADDRESS = re.compile(r"[^\s<>\"'@,;:()\[\]]+@[^\s<>\"'@,;:()\[\]]+")


@dataclass(frozen=True)
class Scope:
    """None means every clinic (an operator); otherwise one clinic (its admin)."""

    clinic_id: str | None = None

    def where(self, column: Any) -> Any:
        return column == self.clinic_id if self.clinic_id else True


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# -- outbound queue ------------------------------------------------------------------------
async def queue_depth(session: AsyncSession, scope: Scope) -> dict[tuple[str, str], int]:
    """Notifications by (clinic slug, state)."""
    rows = await session.execute(
        select(Clinic.slug, Notification.state, func.count())
        .join(Clinic, Clinic.id == Notification.clinic_id)
        .where(scope.where(Notification.clinic_id))
        .group_by(Clinic.slug, Notification.state)
    )
    return {(slug, state): n for slug, state, n in rows.all()}


def totals_by_state(depth: dict[tuple[str, str], int]) -> dict[str, int]:
    out = dict.fromkeys(NOTIFICATION_STATES, 0)
    for (_, state), n in depth.items():
        out[state] = out.get(state, 0) + n
    return out


async def oldest_waiting(session: AsyncSession, scope: Scope) -> datetime | None:
    value = await session.scalar(
        select(func.min(Notification.created_at)).where(
            Notification.state.in_(WAITING_STATES), scope.where(Notification.clinic_id)
        )
    )
    return _aware(value)


def scrub_reason(text: str | None) -> str:
    """A deferral reason fit for a page: no addresses, one line, bounded length."""
    if not text:
        return "(no reason recorded)"
    one_line = " ".join(text.split())
    return _ADDRESS.sub("<address>", one_line)[:160]


async def deferral_reasons(
    session: AsyncSession, scope: Scope, limit: int = 10
) -> list[tuple[str, int]]:
    """The most common reasons among deferred and failed notifications."""
    rows = await session.execute(
        select(Notification.last_error, func.count())
        .where(Notification.state.in_(("deferred", "failed")), scope.where(Notification.clinic_id))
        .group_by(Notification.last_error)
    )
    counts: Counter[str] = Counter()
    for reason, n in rows.all():
        counts[scrub_reason(reason)] += n
    return counts.most_common(limit)


# -- series over time ----------------------------------------------------------------------
@dataclass(frozen=True)
class DayStats:
    day: datetime
    sent: int = 0
    bounced: int = 0
    failed: int = 0
    latency_p50: float | None = None  # seconds from enqueue to the relay's acceptance
    latency_p95: float | None = None
    inbound: int = 0
    quarantined: int = 0

    @property
    def bounce_rate(self) -> float | None:
        done = self.sent + self.bounced
        return self.bounced / done if done else None


def _day(value: datetime) -> datetime:
    v = _aware(value) or value
    return datetime(v.year, v.month, v.day, tzinfo=UTC)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _day_of(session: AsyncSession, column: Any) -> Any:
    """The UTC day of a timestamp column as 'YYYY-MM-DD' text, computed by the database."""
    assert session.bind is not None
    if session.bind.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d", column)  # stored as naive UTC text
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")


def _seconds_between(session: AsyncSession, later: Any, earlier: Any) -> Any:
    assert session.bind is not None
    if session.bind.dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


async def daily(
    session: AsyncSession, scope: Scope, now: datetime, days: int = 14
) -> list[DayStats]:
    """Per UTC day (the day a notification was queued, a message received) for the last
    ``days`` days: outcomes, latency, bounce rate, inbound volume.

    Counting happens in the database; only one float per sent notification comes back, for
    the latency percentiles (SQLite has no percentile function).
    """
    start = _day(now) - timedelta(days=days - 1)
    n_day = _day_of(session, Notification.created_at)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    counted = await session.execute(
        select(n_day, Notification.state, func.count())
        .where(
            Notification.created_at >= start,
            Notification.state.in_(("sent", "bounced", "failed")),
            scope.where(Notification.clinic_id),
        )
        .group_by(n_day, Notification.state)
    )
    for day_text, state, n in counted.all():
        outcomes[str(day_text)][state] += int(n)
    latencies: dict[str, list[float]] = defaultdict(list)
    timed = await session.execute(
        select(
            n_day, _seconds_between(session, Notification.sent_at, Notification.created_at)
        ).where(
            Notification.created_at >= start,
            Notification.state == "sent",
            Notification.sent_at.is_not(None),
            scope.where(Notification.clinic_id),
        )
    )
    for day_text, seconds in timed.all():
        latencies[str(day_text)].append(float(seconds))
    i_day = _day_of(session, InboundMessage.received_at)
    inbound: dict[str, Counter[str]] = defaultdict(Counter)
    received = await session.execute(
        select(i_day, InboundMessage.state, func.count())
        .where(InboundMessage.received_at >= start, scope.where(InboundMessage.clinic_id))
        .group_by(i_day, InboundMessage.state)
    )
    for day_text, state, n in received.all():
        inbound[str(day_text)][state] += int(n)
    out = []
    for i in range(days):
        day = start + timedelta(days=i)
        key = day.strftime("%Y-%m-%d")
        o, lat, inb = (
            outcomes.get(key, Counter()),
            latencies.get(key, []),
            inbound.get(key, Counter()),
        )
        out.append(
            DayStats(
                day=day,
                sent=o["sent"],
                bounced=o["bounced"],
                failed=o["failed"],
                latency_p50=_percentile(lat, 0.5),
                latency_p95=_percentile(lat, 0.95),
                inbound=sum(inb.values()),
                quarantined=inb["quarantined"],
            )
        )
    return out


# -- inbound, SLA, patients ----------------------------------------------------------------
async def quarantine_held(session: AsyncSession, scope: Scope) -> int:
    q = select(func.count()).select_from(QuarantineItem).where(QuarantineItem.state == "held")
    if scope.clinic_id:
        q = q.join(InboundMessage, InboundMessage.id == QuarantineItem.inbound_id).where(
            InboundMessage.clinic_id == scope.clinic_id
        )
    return int(await session.scalar(q) or 0)


async def quarantine_items(
    session: AsyncSession, scope: Scope, state: str = "held", limit: int = 100
) -> list[dict[str, Any]]:
    q = (
        select(QuarantineItem, InboundMessage.source, InboundMessage.size, InboundMessage.route)
        .join(InboundMessage, InboundMessage.id == QuarantineItem.inbound_id)
        .where(QuarantineItem.state == state, scope.where(InboundMessage.clinic_id))
        .order_by(QuarantineItem.created_at.desc())
        .limit(limit)
    )
    return [
        {
            "id": item.id,
            "reason": item.reason,
            "detail": scrub_reason(item.detail) if item.detail else "",
            "created_at": item.created_at,
            "source": source,
            "size": size,
            "route": route,
        }
        for item, source, size, route in (await session.execute(q)).all()
    ]


async def sla_breaches(
    session: AsyncSession, scope: Scope, limit: int = 50
) -> list[dict[str, Any]]:
    """Open threads past their SLA deadline, oldest breach first (ids only)."""
    q = (
        select(Thread.id, Clinic.slug, Thread.pool_id, Thread.sla_due_at, Thread.urgent)
        .join(Clinic, Clinic.id == Thread.clinic_id)
        .where(
            Thread.status == "open",
            Thread.sla_breached_at.is_not(None),
            scope.where(Thread.clinic_id),
        )
        .order_by(Thread.sla_due_at)
        .limit(limit)
    )
    return [
        {"thread_id": t, "clinic": c, "pool_id": p, "due_at": _aware(d), "urgent": u}
        for t, c, p, d, u in (await session.execute(q)).all()
    ]


async def unwatched_requests(session: AsyncSession, scope: Scope) -> int:
    """Open requests waiting in a pool with no active member, or in no pool at all.

    Each still reaches the clinic's fallback recipient, but a non-zero count means routing
    points at a pool nobody works: an operator alert (``carebridge_requests_unwatched``)."""
    watched = (
        select(PoolMember.pool_id)
        .join(Staff, Staff.id == PoolMember.staff_id)
        .where(Staff.active.is_(True))
    )
    q = select(func.count()).where(
        Thread.status == "open",
        or_(Thread.pool_id.is_(None), Thread.pool_id.not_in(watched)),
        scope.where(Thread.clinic_id),
    )
    return int(await session.scalar(q) or 0)


async def open_breach_count(session: AsyncSession, scope: Scope) -> int:
    q = select(func.count()).where(
        Thread.status == "open", Thread.sla_breached_at.is_not(None), scope.where(Thread.clinic_id)
    )
    return int(await session.scalar(q) or 0)


def _current_patients(scope: Scope) -> Select[Any]:
    q = select(Enrolment.patient_id).where(Enrolment.ended_at.is_(None))
    if scope.clinic_id:
        q = q.where(Enrolment.clinic_id == scope.clinic_id)
    return q


async def funnel(session: AsyncSession, scope: Scope) -> dict[str, int]:
    """Enrolled -> invited -> confirmed (email) -> terms agreed -> active."""
    current = _current_patients(scope)
    base = select(func.count()).select_from(Patient).where(Patient.id.in_(current))
    invited_q = select(func.count(func.distinct(Notification.patient_id))).where(
        Notification.kind == str(Kind.REGISTRATION_INVITATION),
        Notification.patient_id.in_(current),
    )
    return {
        "enrolled": int(await session.scalar(base) or 0),
        "invited": int(await session.scalar(invited_q) or 0),
        "confirmed": int(
            await session.scalar(base.where(Patient.email_verified_at.is_not(None))) or 0
        ),
        "terms_agreed": int(
            await session.scalar(base.where(Patient.terms_agreed_at.is_not(None))) or 0
        ),
        "active": int(await session.scalar(base.where(Patient.status == "active")) or 0),
    }


async def deliverability_problems(
    session: AsyncSession, scope: Scope, limit: int = 100
) -> list[dict[str, Any]]:
    """Patients whose address bounces, by id (never the address)."""
    q = (
        select(Patient.id, Patient.deliverability, Patient.status)
        .where(Patient.deliverability != "ok", Patient.id.in_(_current_patients(scope)))
        .order_by(Patient.id)
        .limit(limit)
    )
    return [
        {"patient_id": p, "deliverability": d, "status": s}
        for p, d, s in (await session.execute(q)).all()
    ]


# -- the audit log -------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""  # a prefix: "domain." matches every domain action
    object_type: str = ""
    object_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None  # paging: newest first


async def audit_events(
    session: AsyncSession, scope: Scope, f: AuditFilter, limit: int = 50
) -> list[AuditEvent]:
    q = select(AuditEvent)
    if f.actor:
        q = q.where(AuditEvent.actor == f.actor)
    if f.action:
        q = q.where(AuditEvent.action.startswith(f.action, autoescape=True))
    if f.object_type:
        q = q.where(AuditEvent.object_type == f.object_type)
    if f.object_id:
        q = q.where(AuditEvent.object_id == f.object_id)
    if f.since:
        q = q.where(AuditEvent.at >= f.since)
    if f.until:
        q = q.where(AuditEvent.at < f.until)
    if f.before_seq:
        q = q.where(AuditEvent.seq < f.before_seq)
    if scope.clinic_id:
        # A clinic admin sees what was done to the clinic and what its own staff did.
        staff_actors = select(literal("staff:").concat(Staff.id)).where(
            Staff.clinic_id == scope.clinic_id
        )
        # A request to connect a patient concerns two clinics: the one that asked and the one
        # the patient was at. Both admins see every step of it.
        connections = select(ClinicConnectionRequest.id).where(
            or_(
                ClinicConnectionRequest.clinic_id == scope.clinic_id,
                ClinicConnectionRequest.home_clinic_id == scope.clinic_id,
            )
        )
        q = q.where(
            or_(
                and_(AuditEvent.object_type == "clinic", AuditEvent.object_id == scope.clinic_id),
                AuditEvent.actor.in_(staff_actors),
                and_(
                    AuditEvent.object_type == "clinic_connection",
                    AuditEvent.object_id.in_(connections),
                ),
            )
        )
    q = q.order_by(AuditEvent.seq.desc()).limit(limit)
    return list((await session.scalars(q)).all())


# -- Prometheus gauges, refreshed when /metrics is scraped ---------------------------------
async def refresh_gauges(services: Any) -> None:
    """Set every store-derived gauge from one read-only session."""
    m = services.metrics
    now: datetime = services.clock.now()
    everyone = Scope()
    started = time.perf_counter()
    async with services.sessions() as s:
        depth = await queue_depth(s, everyone)
        oldest = await oldest_waiting(s, everyone)
        held = await quarantine_held(s, everyone)
        breached = await open_breach_count(s, everyone)
        unwatched = await unwatched_requests(s, everyone)
        undeliverable = int(
            await s.scalar(select(func.count()).where(Patient.deliverability != "ok")) or 0
        )
        keys = (await s.execute(select(DkimKey.state, func.count()).group_by(DkimKey.state))).all()
        key_counts = {state: int(n) for state, n in keys}
        slugs = list((await s.scalars(select(Clinic.slug))).all())
    m.db_latency.observe(time.perf_counter() - started)
    for state, n in totals_by_state(depth).items():
        m.queue_depth.labels(state=state).set(n)
    m.queue_depth_by_clinic.clear()
    for slug in slugs:
        for state in (*WAITING_STATES, "sending", "failed"):
            m.queue_depth_by_clinic.labels(clinic=slug, state=state).set(
                depth.get((slug, state), 0)
            )
    m.queue_oldest_age.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0)
    m.quarantine_size.set(held)
    m.sla_breached_open.set(breached)
    m.requests_unwatched.set(unwatched)
    m.patients_undeliverable.set(undeliverable)
    for state in ("pending", "active", "retiring", "retired"):
        m.dkim_keys.labels(state=state).set(key_counts.get(state, 0))

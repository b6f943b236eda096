"""A patient's request reaches the right pool, starts the clock, and tells the right people."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from gateway.careteam import threads
from gateway.models import Message, Notification, Pool, PoolMember, Thread
from gateway.outbound.notify import Kind
from gateway.services import Services
from tests.support.canaries import CANARY_TEXT
from tests.support.world import FakeClock, World

CHI = ZoneInfo("America/Chicago")


async def _pool(services: Services, clinic_id: str, slug: str) -> Pool:
    async with services.sessions() as s:
        pool = await s.scalar(select(Pool).where(Pool.clinic_id == clinic_id, Pool.slug == slug))
        assert pool is not None
        return pool


async def _notifications(services: Services, kind: Kind) -> list[Notification]:
    async with services.sessions() as s:
        rows = await s.scalars(select(Notification).where(Notification.kind == str(kind)))
        return list(rows)


async def test_requests_are_routed_by_type(services: Services, world: World) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    async with services.transaction() as s:
        refill = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="medication_renewal",
            subject="Refill",
            body="Please renew",
            actor=f"patient:{patient.id}",
        )
        appt = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="appointment",
            subject="Visit",
            body="Need a visit",
            actor=f"patient:{patient.id}",
        )
    assert refill.pool_id == (await _pool(services, clinic.id, "refills")).id
    assert appt.pool_id == (await _pool(services, clinic.id, "appointments")).id


async def test_friday_evening_request_ack_says_monday_and_reopening(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    clock.set(datetime(2026, 3, 6, 17, 30, tzinfo=CHI).astimezone(UTC))
    async with services.transaction() as s:
        t = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject=CANARY_TEXT,
            body=CANARY_TEXT,
            actor="test",
        )
    assert t.sla_due_at is not None
    assert t.sla_due_at.astimezone(CHI) == datetime(2026, 3, 9, 17, 0, tzinfo=CHI)
    [ack] = await _notifications(services, Kind.REQUEST_RECEIVED)
    assert ack.patient_id == patient.id
    assert ack.context["expected_reply_at"] == t.sla_due_at.isoformat()
    assert (
        ack.context["reopens_at"]
        == datetime(2026, 3, 9, 8, 0, tzinfo=CHI).astimezone(UTC).isoformat()
    )
    assert CANARY_TEXT not in str(ack.context)


async def test_in_hours_ack_has_no_reopening(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    clock.set(datetime(2026, 3, 4, 10, 0, tzinfo=CHI).astimezone(UTC))
    async with services.transaction() as s:
        await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject="q",
            body="b",
            actor="test",
        )
    [ack] = await _notifications(services, Kind.REQUEST_RECEIVED)
    assert ack.context["reopens_at"] is None


async def test_staff_answer_stops_clock_and_note_stays_internal(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    nurse = await world.staff(clinic)
    async with services.transaction() as s:
        t = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject="q",
            body="b",
            actor="test",
        )
        clock.advance(minutes=5)
        await threads.post_staff_message(
            s, services, thread=t, staff=nurse, body="note", internal=True
        )
        assert t.sla_due_at is not None
        assert await _count(s, Kind.NEW_MESSAGE) == 0
        clock.advance(minutes=5)
        await threads.post_staff_message(s, services, thread=t, staff=nurse, body="answer")
        assert t.sla_due_at is None and t.patient_unread
        assert await _count(s, Kind.NEW_MESSAGE) == 1
        visible = await threads.messages_of(s, t.id, include_internal=False)
        assert [m.body for m in visible] == ["b", "answer"]
        everything = await threads.messages_of(s, t.id, include_internal=True)
        assert len(everything) == 3


async def _count(s: object, kind: Kind) -> int:
    from sqlalchemy import func
    from sqlalchemy.ext.asyncio import AsyncSession

    assert isinstance(s, AsyncSession)
    return int(
        await s.scalar(
            select(func.count()).select_from(Notification).where(Notification.kind == str(kind))
        )
        or 0
    )


async def test_patient_reply_reopens_and_restarts_clock(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    nurse = await world.staff(clinic)
    async with services.transaction() as s:
        t = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject="q",
            body="b",
            actor="test",
        )
        first_due = t.sla_due_at
        clock.advance(hours=1)
        await threads.post_patient_message(s, services, thread=t, body="again", actor="test")
        assert t.sla_due_at == first_due  # writing again never pushes the deadline out
        await threads.close_thread(s, services, thread=t, staff=nurse)
        assert t.status == "closed" and t.sla_due_at is None
        clock.advance(hours=1)
        await threads.post_patient_message(
            s, services, thread=t, body="more", source="email", actor="test"
        )
        assert t.status == "open" and t.sla_due_at is not None and t.sla_due_at != first_due
        assert await _count(s, Kind.REPLY_ACKNOWLEDGED) == 1
        assert await threads.thread_for_patient(s, t.id, patient.id) is t
        assert await threads.thread_for_patient(s, t.id, "someone-else") is None


async def test_staff_digest_is_coalesced_with_counts(services: Services, world: World) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    nurse = await world.staff(clinic)
    quiet = await world.staff(clinic)
    refills = await _pool(services, clinic.id, "refills")
    async with services.transaction() as s:
        await s.merge(PoolMember(pool_id=refills.id, staff_id=nurse.id))
        await s.merge(PoolMember(pool_id=refills.id, staff_id=quiet.id))
        q = await s.get(type(quiet), quiet.id)
        assert q is not None
        q.preferences = {"digest": "off"}
    async with services.transaction() as s:
        for urgent in (False, True, False):
            await threads.create_thread(
                s,
                services,
                patient=patient,
                clinic=clinic,
                request_type="medication_renewal",
                subject="r",
                body=CANARY_TEXT,
                urgent=urgent,
                actor="test",
            )
    digests = {d.staff_id: d for d in await _notifications(services, Kind.STAFF_DIGEST)}
    assert set(digests) == {nurse.id, quiet.id}
    digest = digests[nurse.id]
    assert digest.context["count"] == 3 and digest.context["urgent_count"] == 1
    # Digests off still hears of urgent work, and only of that.
    assert (digests[quiet.id].context["count"], digests[quiet.id].context["urgent_count"]) == (1, 1)
    assert digest.context["pool_id"] == refills.id
    assert CANARY_TEXT not in str(digest.context)


async def test_bad_request_type_is_refused(services: Services, world: World) -> None:
    import pytest

    from gateway.errors import UsageError

    clinic = await world.clinic()
    patient = await world.patient(clinic)
    with pytest.raises(UsageError, match="request type"):
        async with services.transaction() as s:
            await threads.create_thread(
                s,
                services,
                patient=patient,
                clinic=clinic,
                request_type="pizza",
                subject="q",
                body="b",
                actor="test",
            )
    async with services.sessions() as s:
        assert (await s.scalars(select(Thread))).first() is None
        assert (await s.scalars(select(Message))).first() is None


async def test_digest_preferences_hourly_urgent_and_off(
    services: Services, world: World, clock: FakeClock
) -> None:
    from datetime import timedelta

    from gateway.models import Staff

    clinic = await world.clinic()
    patient = await world.patient(clinic)
    hourly = await world.staff(clinic)
    urgent_only = await world.staff(clinic)
    refills = await _pool(services, clinic.id, "refills")
    clock.set(datetime(2026, 3, 4, 15, 20, tzinfo=UTC))
    async with services.transaction() as s:
        for member, prefs in ((hourly, {"digest": "hourly"}), (urgent_only, {"urgent_only": True})):
            await s.merge(PoolMember(pool_id=refills.id, staff_id=member.id))
            row = await s.get(Staff, member.id)
            assert row is not None
            row.preferences = prefs

    async def create(urgent: bool) -> None:
        async with services.transaction() as s:
            await threads.create_thread(
                s,
                services,
                patient=patient,
                clinic=clinic,
                request_type="medication_renewal",
                subject="r",
                body="b",
                urgent=urgent,
                actor="test",
            )

    await create(False)
    [digest] = await _notifications(services, Kind.STAFF_DIGEST)
    assert digest.staff_id == hourly.id
    assert digest.next_attempt_at == datetime(2026, 3, 4, 16, 0, tzinfo=UTC)
    clock.advance(minutes=5)
    await create(True)  # urgent: pulls the hourly digest forward, reaches urgent-only staff
    digests = {d.staff_id: d for d in await _notifications(services, Kind.STAFF_DIGEST)}
    assert set(digests) == {hourly.id, urgent_only.id}
    assert digests[hourly.id].context["count"] == 2
    assert digests[hourly.id].context["urgent_count"] == 1
    assert digests[hourly.id].next_attempt_at == clock.now()
    assert digests[urgent_only.id].context["count"] == 1

    # Once a worker has claimed the digest, new work starts a fresh one: nothing is lost.
    async with services.transaction() as s:
        claimed = await s.get(Notification, digests[hourly.id].id)
        assert claimed is not None
        claimed.state = "sending"
    clock.advance(minutes=1)
    await create(False)
    fresh = [
        d
        for d in await _notifications(services, Kind.STAFF_DIGEST)
        if d.staff_id == hourly.id and d.state == "queued"
    ]
    assert len(fresh) == 1 and fresh[0].context["count"] == 1
    assert fresh[0].next_attempt_at - clock.now() <= timedelta(hours=1)

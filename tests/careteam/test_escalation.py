"""SLA timers with a controllable clock: the pool is warned at 75% of the business time, the
supervisor and the patient are told at the deadline, each exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from gateway.careteam import escalation, threads
from gateway.models import Notification, Pool, PoolMember, Staff
from gateway.outbound.notify import Kind
from gateway.services import Services
from tests.support.canaries import CANARY_TEXT
from tests.support.world import FakeClock, World

CHI = ZoneInfo("America/Chicago")


async def _kinds(services: Services) -> list[tuple[str, str | None, str | None]]:
    async with services.sessions() as s:
        rows = await s.scalars(select(Notification).order_by(Notification.created_at))
        return [(r.kind, r.staff_id, r.patient_id) for r in rows]


async def test_warning_then_breach_at_the_right_moments(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic, given_name=CANARY_TEXT)
    nurse = await world.staff(clinic)
    supervisor = await world.staff(clinic, role="provider")
    bystander = await world.staff(clinic)
    async with services.transaction() as s:
        pool = await s.scalar(
            select(Pool).where(Pool.clinic_id == clinic.id, Pool.slug == "care-team")
        )
        assert pool is not None
        pool.supervisor_id = supervisor.id
        await s.merge(PoolMember(pool_id=pool.id, staff_id=nurse.id))
    # Friday 17:30 local: due Monday 17:00, warned Monday 14:45 (75% of 9 business hours).
    clock.set(datetime(2026, 3, 6, 17, 30, tzinfo=CHI).astimezone(UTC))
    t = await world.thread(clinic, patient, subject=CANARY_TEXT, body=CANARY_TEXT)
    before = len(await _kinds(services))

    clock.set(datetime(2026, 3, 9, 14, 44, tzinfo=CHI).astimezone(UTC))
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 0)

    clock.set(datetime(2026, 3, 9, 14, 45, tzinfo=CHI).astimezone(UTC))
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(1, 0)
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 0)
    new = (await _kinds(services))[before:]
    assert new == [(str(Kind.SLA_WARNING), nurse.id, None)]

    clock.set(datetime(2026, 3, 9, 16, 59, tzinfo=CHI).astimezone(UTC))
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 0)
    breaches_before = services.metrics.sla_breaches._value.get()
    clock.set(datetime(2026, 3, 9, 17, 0, tzinfo=CHI).astimezone(UTC))
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 1)
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 0)
    new = (await _kinds(services))[before + 1 :]
    assert sorted(new, key=str) == sorted(
        [
            (str(Kind.SLA_BREACH), supervisor.id, None),
            (str(Kind.SLA_BREACH_PATIENT), None, patient.id),
        ],
        key=str,
    )
    assert bystander.id not in {k[1] for k in new}
    assert services.metrics.sla_breaches._value.get() == breaches_before + 1
    async with services.sessions() as s:
        for row in await s.scalars(select(Notification)):
            assert CANARY_TEXT not in str(row.context)
    assert t.id


async def test_answered_thread_is_never_escalated(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    nurse = await world.staff(clinic)
    clock.set(datetime(2026, 3, 4, 9, 0, tzinfo=CHI).astimezone(UTC))
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
        clock.advance(hours=1)
        await threads.post_staff_message(s, services, thread=t, staff=nurse, body="done")
    clock.advance(days=5)
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 0)


async def test_breach_without_supervisor_reaches_on_call_or_admins(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    admin = await world.staff(clinic, role="clinic_admin")
    on_call = await world.staff(clinic)
    clock.set(datetime(2026, 3, 4, 9, 0, tzinfo=CHI).astimezone(UTC))
    await world.thread(clinic, patient, request_type="appointment")
    clock.advance(days=2)
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(0, 1)
    staff_ids = {k[1] for k in await _kinds(services) if k[0] == str(Kind.SLA_BREACH)}
    assert staff_ids == {admin.id}
    async with services.transaction() as s:
        member = await s.get(Staff, on_call.id)
        assert member is not None
        member.preferences = {"on_call": True}
        contacts = await escalation.escalation_contacts(s, None, clinic.id)
        assert [c.id for c in contacts] == [on_call.id]


async def test_warning_for_an_empty_pool_reaches_the_escalation_contacts(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    admin = await world.staff(clinic, role="clinic_admin")
    clock.set(datetime(2026, 3, 4, 8, 0, tzinfo=CHI).astimezone(UTC))
    await world.thread(clinic, patient, request_type="immunization_record")
    clock.set(datetime(2026, 3, 4, 14, 45, tzinfo=CHI).astimezone(UTC))
    assert await escalation.run_sla_timers(services) == escalation.TimerResult(1, 0)
    warned = [k for k in await _kinds(services) if k[0] == str(Kind.SLA_WARNING)]
    assert warned == [(str(Kind.SLA_WARNING), admin.id, None)]

"""The scheduler: reminders 48 h and 2 h before, cancellable; on PostgreSQL one leader among
several nodes, and leadership moves when the leader's connection dies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from gateway.careteam import appointments
from gateway.config import Config
from gateway.crypto import KeyRing
from gateway.models import Notification, Token
from gateway.outbound.notify import Kind
from gateway.scheduler import SchedulerPart
from gateway.services import Services, open_services
from tests.support.world import FakeClock, World


@pytest.fixture
async def sched(services: Services) -> AsyncIterator[SchedulerPart]:
    part = SchedulerPart(services)
    try:
        yield part
    finally:
        await part.stop()


async def _reminders(services: Services) -> int:
    async with services.sessions() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.kind == str(Kind.APPOINTMENT_REMINDER))
        )
        return int(n or 0)


async def test_reminders_48h_and_2h_before_and_cancel(
    services: Services, world: World, clock: FakeClock, sched: SchedulerPart
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    async with services.transaction() as s:
        appt = await appointments.schedule(
            s,
            services,
            clinic=clinic,
            patient=patient,
            starts_at=clock.now() + timedelta(days=5),
            actor="test",
        )
        other = await appointments.schedule(
            s,
            services,
            clinic=clinic,
            patient=patient,
            starts_at=clock.now() + timedelta(days=5),
            actor="test",
        )
        await appointments.cancel(s, services, appointment_id=other.id, actor="test")
    assert (await sched.tick()).reminders == 0
    clock.set(appt.starts_at - timedelta(hours=48, minutes=1))
    assert (await sched.tick()).reminders == 0
    clock.advance(minutes=1)
    assert (await sched.tick()).reminders == 1
    assert (await sched.tick()).reminders == 0
    clock.set(appt.starts_at - timedelta(hours=2))
    assert (await sched.tick()).reminders == 1
    clock.advance(minutes=30)
    assert (await sched.tick()).reminders == 0
    assert await _reminders(services) == 2
    async with services.sessions() as s:
        upcoming = await appointments.upcoming_for(s, patient.id, clock.now())
        assert [a.id for a in upcoming] == [appt.id]  # the cancelled one is not listed


async def test_late_booking_gets_only_the_near_reminder(
    services: Services, world: World, clock: FakeClock, sched: SchedulerPart
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    async with services.transaction() as s:
        await appointments.schedule(
            s,
            services,
            clinic=clinic,
            patient=patient,
            starts_at=clock.now() + timedelta(hours=1),
            actor="test",
        )
    assert (await sched.tick()).reminders == 1
    assert await _reminders(services) == 1


async def test_retention_purges_long_expired_tokens(
    services: Services, clock: FakeClock, sched: SchedulerPart
) -> None:
    from gateway import tokens

    async with services.transaction() as s:
        await tokens.issue(
            s,
            services.config.tokens,
            purpose="password_reset",
            subject_kind="patient",
            subject_id="p1",
            now=clock.now(),
        )
    clock.advance(days=3)
    assert (await sched.tick()).purged == 0
    clock.advance(days=7)
    assert (await sched.tick()).purged == 1
    async with services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Token)) == 0


async def test_retention_purges_expired_web_sessions_and_idle_throttles(
    services: Services, clock: FakeClock, sched: SchedulerPart
) -> None:
    from gateway import throttle
    from gateway.models.portal import Throttle, WebSession

    now = clock.now()
    async with services.transaction() as s:
        s.add(
            WebSession(
                id_hash="a" * 64,
                principal_kind="patient",
                principal_id="p1",
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(hours=12),
            )
        )
        await throttle.hit(s, throttle.SIGN_IN, "k" * 64, now)
    assert (await sched.tick()).purged == 0
    clock.advance(days=2)
    assert (await sched.tick()).purged == 2
    async with services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(WebSession)) == 0
        assert await s.scalar(select(func.count()).select_from(Throttle)) == 0


@pytest.fixture
async def second_node(
    services: Services, make_config: Callable[..., Config], keyring: KeyRing, clock: FakeClock
) -> AsyncIterator[Services]:
    """Another node: its own engine and connections on the same store."""
    node = await open_services(
        make_config(store_url=services.config.store.url), keyring=keyring, clock=clock
    )
    try:
        yield node
    finally:
        await node.close()


async def test_two_nodes_send_reminders_once_and_leadership_moves(
    services: Services, second_node: Services, world: World, clock: FakeClock, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("leader election is a PostgreSQL feature; SQLite runs one node")
    clinic = await world.clinic()
    patients = [await world.patient(clinic) for _ in range(5)]
    async with services.transaction() as s:
        for p in patients:
            await appointments.schedule(
                s,
                services,
                clinic=clinic,
                patient=p,
                starts_at=clock.now() + timedelta(hours=30),
                actor="test",
            )
    a, b = SchedulerPart(services), SchedulerPart(second_node)
    try:
        first = await a.tick()
        second = await b.tick()
        assert first.leader and not second.leader
        assert first.reminders == 5 and second.reminders == 0
        assert not (await b.tick()).leader
        assert await _reminders(services) == 5

        # Kill the leader's database connection, as if its node died.
        pid = a.lock.backend_pid
        assert pid is not None
        async with second_node.engine.connect() as admin:
            killed = await admin.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            assert killed
        took_over = await _tick_until_leader(b)
        assert took_over.leader
        # The old leader notices its dead connection and stands down.
        assert not (await a.tick()).leader

        # Work appearing later is done once, by the new leader.
        clock.advance(hours=28, minutes=30)
        results = [await a.tick(), await b.tick(), await a.tick(), await b.tick()]
        assert sum(r.reminders for r in results) == 5
        assert [r.leader for r in results] == [False, True, False, True]
        assert await _reminders(services) == 10
    finally:
        await a.stop()
        await b.stop()


async def _tick_until_leader(part: SchedulerPart, attempts: int = 50) -> object:
    """The killed backend releases its lock as it exits; that takes a moment."""
    import asyncio

    for _ in range(attempts):
        result = await part.tick()
        if result.leader:
            return result
        await asyncio.sleep(0.05)
    return await part.tick()


async def test_scheduler_part_runs_in_the_serve_loop(services: Services, world: World) -> None:
    import asyncio

    from gateway import serve

    clinic = await world.clinic()
    patient = await world.patient(clinic)
    async with services.transaction() as s:
        await appointments.schedule(
            s,
            services,
            clinic=clinic,
            patient=patient,
            starts_at=services.clock.now() + timedelta(hours=1),
            actor="test",
        )
    parts = [p for p in serve.build_parts(services) if p.name == "scheduler"]
    assert len(parts) == 1
    stopping = asyncio.Event()
    runner = asyncio.create_task(serve.run(services, parts, stopping))
    for _ in range(200):
        if await _reminders(services) == 1:
            break
        await asyncio.sleep(0.01)
    stopping.set()
    await runner
    assert await _reminders(services) == 1

"""Urgent first: a request flagged by the urgent screen (or by staff) is due within one business
hour (per clinic), reaches its pool and the fallback recipient by email at once whatever their
digest settings, tops the queue, and is marked in words on the queue and thread pages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from gateway.admin.clinics import set_urgent_sla
from gateway.models import Clinic, Staff, Thread
from gateway.outbound.notify import Kind
from gateway.portal import urgent as screen
from gateway.services import Services
from gateway.web.app import create_app
from tests.careteam.helpers import (
    decoded,
    deliver_due,
    notifications,
    pool_by_slug,
    post,
    sign_in,
)
from tests.support.canaries import CANARY_TEXT
from tests.support.world import FakeClock, World

# Monday 2 March 2026, 09:00 in Chicago (CST, UTC-6): the clinic is open 08:00-17:00.
MONDAY_9AM = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
CHEST_PAIN = "I have crushing chest pain since this morning"


@pytest.fixture
async def browser(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _set_digest(services: Services, staff: Staff, mode: str) -> None:
    async with services.transaction() as s:
        row = await s.get(Staff, staff.id)
        assert row is not None
        row.preferences = {"digest": mode}


async def test_urgent_request_is_due_in_one_business_hour(
    services: Services, world: World, clock: FakeClock
) -> None:
    clock.set(MONDAY_9AM)
    clinic = await world.clinic()
    await world.staff(clinic, role="provider")
    patient = await world.patient(clinic)
    flags = screen.screen([CHEST_PAIN])
    assert flags == ["chest pain"]
    urgent = await world.thread(clinic, patient, body=CHEST_PAIN, urgent=bool(flags))
    routine = await world.thread(clinic, patient)
    assert urgent.sla_due_at == MONDAY_9AM + timedelta(hours=1)
    assert routine.sla_due_at == MONDAY_9AM + timedelta(days=1)

    # Per clinic: 30 business minutes; and at 16:45 local the hour runs on into Tuesday.
    async with services.transaction() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None
        await set_urgent_sla(s, c, minutes=30, actor="test")
    assert (await world.thread(clinic, patient, urgent=True)).sla_due_at == MONDAY_9AM + timedelta(
        minutes=30
    )
    async with services.transaction() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None
        await set_urgent_sla(s, c, minutes=60, actor="test")
    clock.set(MONDAY_9AM + timedelta(hours=7, minutes=45))  # 16:45 local
    late = await world.thread(clinic, patient, urgent=True)
    # 15 minutes on Monday, 45 on Tuesday from 08:00 local (14:00 UTC).
    assert late.sla_due_at == datetime(2026, 3, 3, 14, 45, tzinfo=UTC)


async def test_urgent_request_emails_pool_and_fallback_at_once_despite_digests(
    services: Services, world: World, clock: FakeClock
) -> None:
    clock.set(MONDAY_9AM)
    clinic = await world.clinic()
    nurse = await world.staff(clinic, role="nurse")  # first: watches every pool
    admin = await world.staff(clinic, role="clinic_admin")  # the fallback, in no pool
    await _set_digest(services, nurse, "daily")
    patient = await world.patient(clinic)

    await world.thread(clinic, patient)  # routine: held for the daily digest
    sent_before = set(await deliver_due(services))
    assert not any(n.id in sent_before for n in await notifications(services, Kind.STAFF_DIGEST))
    await world.thread(clinic, patient, subject=CANARY_TEXT, body=CHEST_PAIN, urgent=True)

    digests = {n.staff_id: n for n in await notifications(services, Kind.STAFF_DIGEST)}
    assert set(digests) == {nurse.id, admin.id}
    assert digests[nurse.id].context["urgent_count"] == 1
    outbox = await deliver_due(services)  # no clock movement: "at once"
    new = {k: v for k, v in outbox.items() if k not in sent_before}
    for staff in (nurse, admin):
        mail = new[digests[staff.id].id]
        text = decoded(mail)
        assert str(mail["Subject"]).startswith("Urgent:")
        assert "marked urgent" in text
        assert CANARY_TEXT not in text and "chest" not in text.lower()

    # Digests "off" still hear of urgent work.
    await _set_digest(services, nurse, "off")
    await world.thread(clinic, patient, urgent=True)
    latest = [n for n in await notifications(services, Kind.STAFF_DIGEST) if n.staff_id == nurse.id]
    assert latest[-1].next_attempt_at <= clock.now()


async def test_urgent_tops_the_queue_with_a_marker_and_staff_can_flag(
    services: Services, world: World, clock: FakeClock, browser: httpx.AsyncClient
) -> None:
    clock.set(MONDAY_9AM)
    clinic = await world.clinic()
    await world.staff(clinic, email="nurse@clinic.example", role="nurse")
    patient = await world.patient(clinic)
    care_team = await pool_by_slug(services, clinic.id, "care-team")
    early = await world.thread(clinic, patient)  # routine, earliest deadline
    clock.advance(hours=2)
    flagged = await world.thread(clinic, patient, urgent=True)
    clock.advance(hours=1)
    later = await world.thread(clinic, patient)

    await sign_in(browser, "nurse@clinic.example")
    page = await browser.get(f"/staff/pools/{care_team.id}")
    assert page.status_code == 200
    order = re.findall(r'data-thread="([^"]+)"', page.text)
    assert order == [flagged.id, early.id, later.id]
    first_row = page.text[page.text.index(f'data-thread="{flagged.id}"') :]
    first_row = first_row[: first_row.index("</tr>")]
    assert "URGENT" in first_row  # in words, not colour alone
    thread_page = await browser.get(f"/staff/threads/{flagged.id}")
    assert 'id="urgent-marker"' in thread_page.text and "URGENT" in thread_page.text
    assert 'id="urgent-marker"' not in (await browser.get(f"/staff/threads/{later.id}")).text

    # Staff flag the later one: its deadline shortens to one business hour and it moves up.
    await deliver_due(services)  # the first urgent digest goes out
    r = await post(browser, f"/staff/threads/{later.id}", f"/staff/threads/{later.id}/urgent", {})
    assert r.status_code == 303
    async with services.sessions() as s:
        row = await s.get(Thread, later.id)
        assert row is not None and row.urgent
        assert row.sla_due_at == clock.now() + timedelta(hours=1)
        flagged_due = await s.scalar(select(Thread.sla_due_at).where(Thread.id == flagged.id))
    assert flagged_due is not None
    queued = [n for n in await notifications(services, Kind.STAFF_DIGEST) if n.state == "queued"]
    assert [n.context["urgent_count"] for n in queued] == [1]
    assert queued[0].next_attempt_at <= clock.now()
    page = await browser.get(f"/staff/pools/{care_team.id}")
    order = re.findall(r'data-thread="([^"]+)"', page.text)
    assert order[:2] == [flagged.id, later.id] and order[2] == early.id

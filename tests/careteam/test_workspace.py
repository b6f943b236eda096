"""The staff workspace over real HTTP: a nurse signs in, works the Refills queue (urgent first,
then by deadline), writes an internal note and a reply, claims, assigns, releases a held result
and closes; a clinic admin edits routing rules in order. Every read and write is audited."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from gateway.careteam import threads
from gateway.models import AuditEvent, Notification, PoolMember, RoutingRule, Thread
from gateway.outbound.notify import Kind
from gateway.services import Services
from gateway.web.app import create_app
from tests.careteam.helpers import pool_by_slug, post, sign_in
from tests.support.canaries import CANARY_TEXT
from tests.support.world import FakeClock, World


@pytest.fixture
async def browser(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _actions(services: Services) -> list[str]:
    async with services.sessions() as s:
        return list(await s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


async def test_nurse_works_the_refills_queue(
    services: Services, world: World, clock: FakeClock, browser: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic, given_name="Zed")
    nurse = await world.staff(clinic, email="nurse@clinic.example", name="Nurse Ann")
    colleague = await world.staff(clinic, name="Dr Bo", role="provider")
    refills = await pool_by_slug(services, clinic.id, "refills")
    async with services.transaction() as s:
        await s.merge(PoolMember(pool_id=refills.id, staff_id=nurse.id))
    made = []
    for n, urgent in enumerate((False, False, True)):
        made.append(
            await world.thread(
                clinic,
                patient,
                request_type="medication_renewal",
                subject=f"refill-{n}",
                body=CANARY_TEXT,
                urgent=urgent,
            )
        )
        clock.advance(hours=1)
    await sign_in(browser, "nurse@clinic.example")

    home = await browser.get("/staff")
    assert home.status_code == 200
    row = re.search(
        r'data-pool="refills">.*?data-open>(\d+)<.*?data-urgent>(\d+)<', home.text, re.S
    )
    assert row and row.groups() == ("3", "1")

    queue = await browser.get(f"/staff/pools/{refills.id}")
    order = re.findall(r'data-thread="([0-9a-f]+)"', queue.text)
    assert order == [made[2].id, made[0].id, made[1].id]  # urgent, then earliest deadline

    t = made[0]
    page = await browser.get(f"/staff/threads/{t.id}")
    assert page.status_code == 200 and CANARY_TEXT in page.text and "Zed" in page.text
    assert "Zed" not in page.text.split("<title>")[1].split("</title>")[0]

    r = await post(
        browser,
        f"/staff/threads/{t.id}",
        f"/staff/threads/{t.id}/reply",
        {"body": "internal-only-note", "internal": "1"},
    )
    assert r.status_code == 303
    r = await post(
        browser,
        f"/staff/threads/{t.id}",
        f"/staff/threads/{t.id}/reply",
        {"body": "Your refill is ready"},
    )
    assert r.status_code == 303
    async with services.sessions() as s:
        visible = [m.body for m in await threads.messages_of(s, t.id, include_internal=False)]
        assert visible == [CANARY_TEXT, "Your refill is ready"]
        fresh = await s.get(Thread, t.id)
        assert fresh is not None and fresh.sla_due_at is None
        assert fresh.assigned_staff_id == nurse.id  # answering claims an unassigned thread
        kinds = list(
            await s.scalars(select(Notification.kind).where(Notification.patient_id == patient.id))
        )
        assert kinds.count(str(Kind.NEW_MESSAGE)) == 1
    page = await browser.get(f"/staff/threads/{t.id}")
    assert "internal-only-note" in page.text and "Internal note" in page.text

    r = await post(
        browser,
        f"/staff/threads/{t.id}",
        f"/staff/threads/{t.id}/assign",
        {"staff_id": colleague.id},
    )
    assert r.status_code == 303
    r = await post(browser, f"/staff/threads/{t.id}", f"/staff/threads/{t.id}/close", {})
    assert r.status_code == 303
    async with services.sessions() as s:
        fresh = await s.get(Thread, t.id)
        assert fresh is not None and fresh.status == "closed"
        assert fresh.assigned_staff_id == colleague.id

    empty = await post(
        browser,
        f"/staff/threads/{made[1].id}",
        f"/staff/threads/{made[1].id}/reply",
        {"body": "  "},
    )
    assert empty.status_code == 422 and "empty" in empty.text

    actions = await _actions(services)
    for wanted in (
        "staff.home_view",
        "pool.view",
        "thread.view",
        "thread.staff_note",
        "thread.staff_message",
        "thread.assign",
        "thread.close",
    ):
        assert wanted in actions, wanted


async def test_quick_reply_and_result_release(
    services: Services, world: World, browser: httpx.AsyncClient
) -> None:
    from gateway.portal.results import add_result

    clinic = await world.clinic()
    patient = await world.patient(clinic)
    await world.staff(clinic, email="pro@clinic.example", role="provider")
    t = await world.thread(clinic, patient)
    async with services.transaction() as s:
        result = await add_result(
            s,
            services,
            patient=patient,
            clinic=clinic,
            kind="lab",
            title="Lipids",
            data={"ldl": 3},
            release=False,
            actor="test",
        )
        from gateway.careteam import pools

        qr = await pools.add_quick_reply(
            s, clinic_id=clinic.id, title="Refill ok", body="Sent to your pharmacy.", actor="t"
        )
    await sign_in(browser, "pro@clinic.example")
    page = await browser.get(f"/staff/threads/{t.id}?quick={qr.id}")
    assert "Sent to your pharmacy.</textarea>" in page.text
    assert "Lipids" in page.text
    r = await post(
        browser,
        f"/staff/threads/{t.id}",
        f"/staff/results/{result.id}/release",
        {"thread_id": t.id},
    )
    assert r.status_code == 303
    async with services.sessions() as s:
        kinds = list(
            await s.scalars(select(Notification.kind).where(Notification.patient_id == patient.id))
        )
        assert str(Kind.NEW_RESULT) in kinds
    assert "result.release" in await _actions(services)


async def test_other_clinics_and_anonymous_are_kept_out(
    services: Services, world: World, browser: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    other = await world.clinic()
    patient = await world.patient(other)
    await world.staff(clinic, email="nurse@clinic.example")
    t = await world.thread(other, patient)
    anonymous = await browser.get(f"/staff/threads/{t.id}")
    assert anonymous.status_code == 303 and "/staff/login" in anonymous.headers["location"]
    await sign_in(browser, "nurse@clinic.example")
    assert (await browser.get(f"/staff/threads/{t.id}")).status_code == 404
    other_pool = await pool_by_slug(services, other.id, "care-team")
    assert (await browser.get(f"/staff/pools/{other_pool.id}")).status_code == 404
    assert (await browser.get("/staff/setup")).status_code == 403


async def test_clinic_admin_edits_routing_in_order(
    services: Services, world: World, browser: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    admin = await world.staff(clinic, email="admin@clinic.example", role="clinic_admin")
    await sign_in(browser, "admin@clinic.example")
    page = await browser.get("/staff/setup")
    assert page.status_code == 200
    types = re.findall(r'data-type="([^"]+)" data-pool="([^"]+)"', page.text)
    assert types[:2] == [("appointment", "appointments"), ("medication_renewal", "refills")]

    r = await post(
        browser,
        "/staff/setup",
        "/staff/setup",
        {"action": "add-pool", "slug": "dr-x", "name": "Dr. X's team"},
    )
    assert r.status_code == 303
    drx = await pool_by_slug(services, clinic.id, "dr-x")
    # Requests may only be routed to a pool someone watches.
    r = await post(
        browser,
        "/staff/setup",
        "/staff/setup",
        {"action": "add-member", "pool_id": drx.id, "staff_id": admin.id},
    )
    assert r.status_code == 303
    r = await post(
        browser,
        "/staff/setup",
        "/staff/setup",
        {
            "action": "add-rule",
            "request_type": "medication_renewal",
            "pool_id": drx.id,
            "sla_hours": "4",
        },
    )
    assert r.status_code == 303
    async with services.sessions() as s:
        new_rule = await s.scalar(select(RoutingRule).where(RoutingRule.pool_id == drx.id))
        assert new_rule is not None
    # Still second to the Refills rule: Refills wins until the new rule is moved up.
    for _ in range(4):
        await post(
            browser, "/staff/setup", "/staff/setup", {"action": "rule-up", "rule_id": new_rule.id}
        )
    page = await browser.get("/staff/setup")
    types = re.findall(r'data-type="([^"]+)" data-pool="([^"]+)"', page.text)
    assert types[0] == ("medication_renewal", "dr-x")
    t = await world.thread(clinic, patient, request_type="medication_renewal")
    assert t.pool_id == drx.id
    assert t.sla_due_at is not None and t.sla_started_at is not None
    assert t.sla_due_at - t.sla_started_at <= timedelta(days=4)

    bad = await post(
        browser,
        "/staff/setup",
        "/staff/setup",
        {"action": "add-rule", "request_type": "pizza", "pool_id": drx.id},
    )
    assert bad.status_code == 422 and "unknown" in bad.text
    bad = await post(
        browser,
        "/staff/setup",
        "/staff/setup",
        {"action": "add-rule", "request_type": "question", "pool_id": drx.id, "sla_hours": "-3"},
    )
    assert bad.status_code == 422
    assert "routing.add" in await _actions(services) and "routing.move" in await _actions(services)


async def test_admin_sets_hours_and_holidays_and_staff_set_preferences(
    services: Services, world: World, clock: FakeClock, browser: httpx.AsyncClient
) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from gateway.models import Clinic, Staff

    chi = ZoneInfo("America/Chicago")
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    admin = await world.staff(clinic, email="admin@clinic.example", role="clinic_admin")
    await sign_in(browser, "admin@clinic.example")
    form = {
        "action": "calendar", "timezone": "America/Chicago", "hours_mon": "09:00-13:00",
        "hours_tue": "09:00-13:00", "holidays": "2026-03-09\n", "holiday_country": "us",
        "staff_email_replies": "1",
    }  # fmt: skip
    r = await post(browser, "/staff/setup", "/staff/setup", form)
    assert r.status_code == 303
    async with services.sessions() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None
        assert c.business_hours == {"mon": ["09:00", "13:00"], "tue": ["09:00", "13:00"]}
        assert c.holidays == ["2026-03-09"] and c.holiday_country == "US"
        assert c.staff_email_replies is True
    # Friday evening: Monday is a listed holiday, so the reply is due Tuesday at 13:00.
    clock.set(datetime(2026, 3, 6, 18, 0, tzinfo=chi).astimezone(UTC))
    t = await world.thread(clinic, patient)  # the clinic as the form just saved it
    assert t.sla_due_at is not None
    assert t.sla_due_at.astimezone(chi) == datetime(2026, 3, 10, 13, 0, tzinfo=chi)
    await sign_in(browser, "admin@clinic.example")  # the clock jump ended the session

    for bad in ({"hours_wed": "9 to 5"}, {"timezone": "Mars/Olympus"}, {"holidays": "soon"},
                {"holiday_country": "XX"}):  # fmt: skip
        r = await post(browser, "/staff/setup", "/staff/setup", {**form, **bad})
        assert r.status_code == 422, bad
    async with services.sessions() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None and c.timezone == "America/Chicago"  # nothing half-applied

    r = await post(browser, "/staff/preferences", "/staff/preferences",
                   {"digest": "hourly", "on_call": "1"})  # fmt: skip
    assert r.status_code == 303
    async with services.sessions() as s:
        me = await s.get(Staff, admin.id)
        assert me is not None
        assert me.preferences == {"digest": "hourly", "urgent_only": False, "on_call": True}
    bad_mode = await post(browser, "/staff/preferences", "/staff/preferences", {"digest": "x"})
    assert bad_mode.status_code == 422

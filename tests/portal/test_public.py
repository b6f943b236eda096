"""Doors for people not signed in: online enrolment without enumeration, password reset by
emailed link, the view-thread link, and no PHI in URLs, titles or error pages."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from sqlalchemy import func, select

from gateway.careteam import threads
from gateway.models import Clinic, Enrolment, Notification, Patient, Staff, Token
from gateway.services import Services
from tests.portal.helpers import STRONG_PASSWORD, active_patient, csrf_of, patient_sign_in
from tests.portal.mail import deliver
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.world import FakeClock, World


def normalised(html: str) -> str:
    """The page with its per-browser CSRF token blanked, for comparing two answers."""
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html)


async def enrol_online(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    page = await client.get("/enrol")
    return await client.post(
        "/enrol", data={**fields, "csrf_token": csrf_of(page.text)}, follow_redirects=True
    )


async def test_online_enrolment_answers_the_same_for_existing_and_new_people(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    other = await world.clinic(name="Other Clinic")
    existing: Any = await active_patient(services, other, email=CANARY_EMAIL)
    base = {
        "code": clinic.enrolment_code,
        "given_name": "Someone",
        "family_name": "Else",
        "date_of_birth": "1990-01-02",
    }
    started = time.monotonic()
    known = await enrol_online(client, **base, email=CANARY_EMAIL)
    middle = time.monotonic()
    unknown = await enrol_online(client, **base, email="brand-new@example.org")
    # Both answers wait for the same floor, so timing does not tell them apart either
    # (bench/portal_enrol.py measures the spread).
    floor = services.config.web.enrol_min_answer_ms / 1000
    assert middle - started >= floor and time.monotonic() - middle >= floor
    assert known.status_code == unknown.status_code == 200
    assert str(known.url) == str(unknown.url)
    assert normalised(known.text) == normalised(unknown.text)
    assert CANARY_GIVEN not in known.text and CANARY_EMAIL not in known.text
    async with services.sessions() as s:
        row = await s.get(Patient, existing.id)
        enrolments = (
            await s.scalars(select(Enrolment).where(Enrolment.patient_id == existing.id))
        ).all()
        new = (await s.scalars(select(Patient).where(Patient.id != existing.id))).one()
    # The existing account was not moved, renamed or re-invited by a stranger's form.
    assert (
        row is not None
        and row.given_name == "Pat"
        and [e.clinic_id for e in enrolments] == [other.id]
    )
    assert new.status == "pending"
    sent = await deliver(services)
    assert [m.message["To"] for m in sent] == ["brand-new@example.org"]
    assert sent[0].link("/r/")


async def test_online_enrolment_bad_input_and_rate_limit(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    good = {
        "code": clinic.enrolment_code,
        "given_name": "A",
        "family_name": "B",
        "date_of_birth": "1990-01-02",
        "email": "x@example.org",
    }
    r = await enrol_online(client, **{**good, "code": "WRONG"})
    assert r.status_code == 400 and "not recognised" in r.text
    r = await enrol_online(client, **{**good, "date_of_birth": "2999-01-01"})
    assert r.status_code == 400 and "real date of birth" in r.text
    r = await enrol_online(client, **{**good, "email": "not an address"})
    assert (
        r.status_code == 400 and "valid email" in r.text and 'value="A"' in r.text
    )  # nothing lost
    statuses = [(await enrol_online(client, **good)).status_code for _ in range(6)]
    assert statuses[:2] == [200, 200] and statuses[-1] == 429


async def test_password_reset_by_emailed_link_single_use_and_ends_sessions(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    await active_patient(services, clinic, email="pat@example.org")
    await patient_sign_in(client, "pat@example.org")
    other = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    async with other:
        for address in ("pat@example.org", "nobody@example.org"):
            page = await other.get("/portal/reset")
            r = await other.post(
                "/portal/reset", data={"csrf_token": csrf_of(page.text), "email": address}
            )
            assert r.headers["location"] == "/portal/reset/sent"
        sent = await deliver(services)
        assert [m.message["To"] for m in sent] == ["pat@example.org"]
        link = sent[0].link("/reset/")
        for _ in range(3):
            assert (await other.head(link)).status_code == 200
        page = await other.get(link)
        r = await other.post(
            link,
            data={
                "csrf_token": csrf_of(page.text),
                "password": "password1",
                "confirm": "password1",
            },
        )
        assert r.status_code == 400
        new = "marble lantern orchard 51"
        r = await other.post(
            link, data={"csrf_token": csrf_of(page.text), "password": new, "confirm": new}
        )
        assert r.status_code == 303 and r.headers["location"] == "/portal/login?done=reset"
        assert (await other.get(link)).status_code == 404
    # The old session is gone, the old password no longer works, the new one does.
    assert (await client.get("/portal")).status_code == 303
    page = await client.get("/portal/login")
    r = await client.post(
        "/portal/login",
        data={
            "csrf_token": csrf_of(page.text),
            "email": "pat@example.org",
            "password": STRONG_PASSWORD,
        },
    )
    assert r.status_code == 401
    r = await client.post(
        "/portal/login",
        data={
            "csrf_token": csrf_of(page.text),
            "email": "pat@example.org",
            "password": "marble lantern orchard 51",
        },
    )
    assert r.status_code == 303


async def test_view_thread_link_leads_through_sign_in_and_never_signs_in(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    nurse = await world.staff(clinic)
    async with services.transaction() as s:
        p = await s.get(Patient, patient.id)
        c = await s.get(Clinic, clinic.id)
        member = await s.get(Staff, nurse.id)
        assert p and c and member
        thread = await threads.create_thread(
            s,
            services,
            patient=p,
            clinic=c,
            request_type="question",
            subject="S",
            body="B",
            actor="test",
        )
        await threads.post_staff_message(s, services, thread=thread, staff=member, body="Answer")
    sent = await deliver(services)
    link = next(m for m in sent if "/t/" in m.text).link("/t/")
    r = await client.get(link)
    assert (
        r.status_code == 303
        and r.headers["location"] == f"/portal/login?next=/portal/threads/{thread.id}"
    )
    assert client.cookies.get("cb_session") is None
    page = await client.get(r.headers["location"])
    r = await client.post(
        "/portal/login",
        data={
            "csrf_token": csrf_of(page.text),
            "email": "pat@example.org",
            "password": STRONG_PASSWORD,
            "next": f"/portal/threads/{thread.id}",
        },
    )
    assert r.headers["location"] == f"/portal/threads/{thread.id}"
    assert "Answer" in (await client.get(r.headers["location"])).text
    async with services.sessions() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Token)
            .where(Token.purpose == "view_thread", Token.uses > 0)
        )
    assert n == 0


async def test_no_phi_in_urls_titles_or_error_pages(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await active_patient(
        services, clinic, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email=CANARY_EMAIL
    )
    await patient_sign_in(client, CANARY_EMAIL)
    seen_urls: list[str] = []
    titles: list[str] = []

    async def visit(path: str) -> httpx.Response:
        r = await client.get(path)
        seen_urls.append(str(r.url))
        if "location" in r.headers:
            seen_urls.append(r.headers["location"])
        titles.extend(re.findall(r"<title>(.*?)</title>", r.text, re.S))
        seen_urls.extend(re.findall(r'(?:href|action)="([^"]+)"', r.text))
        return r

    page = await visit("/portal/compose/question")
    r = await client.post(
        "/portal/compose/question",
        data={"csrf_token": csrf_of(page.text), "subject": CANARY_TEXT, "message": CANARY_TEXT},
    )
    seen_urls.append(r.headers["location"])
    for path in (
        "/portal",
        r.headers["location"],
        "/portal/results",
        "/portal/library",
        "/portal/preferences",
        "/portal/threads/does-not-exist",
        "/portal/results/nope",
        "/portal/library/nope",
        "/r/not-a-real-token-but-long-enough",
        "/nope",
    ):
        resp = await visit(path)
        if resp.status_code >= 400:
            for canary in (CANARY_GIVEN, CANARY_FAMILY, CANARY_EMAIL, CANARY_TEXT):
                assert canary not in resp.text, path
    # A path someone typed (or a link token) is never echoed back into the page.
    for path in (
        f"/r/{CANARY_GIVEN}aaaaaaaaaaaaaaaaaaaaaaaaaa",
        f"/t/{CANARY_FAMILY}bbbbbbbbbbbbbbbbbbbbbbbb",
    ):
        resp = await client.get(path)
        assert CANARY_GIVEN not in resp.text and CANARY_FAMILY not in resp.text, path
    for canary in (CANARY_GIVEN, CANARY_FAMILY, CANARY_EMAIL, CANARY_TEXT, "Zebulon"):
        assert not any(canary.lower() in u.lower() for u in seen_urls), canary
        assert not any(canary.lower() in t.lower() for t in titles), canary
    async with services.sessions() as s:
        ctx = (await s.scalars(select(Notification.context))).all()
    assert CANARY_TEXT not in repr(ctx)


async def test_staff_password_reset_uses_the_same_link_page(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="nurse@clinic.example")
    page = await client.get("/staff/reset")
    r = await client.post(
        "/staff/reset", data={"csrf_token": csrf_of(page.text), "email": "nurse@clinic.example"}
    )
    assert r.headers["location"] == "/portal/reset/sent"
    sent = await deliver(services)
    assert [m.message["To"] for m in sent] == ["nurse@clinic.example"]
    link = sent[0].link("/reset/")
    assert (await client.head(link)).status_code == 200
    form = await client.get(link)
    new = "copper meadow falcon 64"
    r = await client.post(
        link, data={"csrf_token": csrf_of(form.text), "password": new, "confirm": new}
    )
    assert r.status_code == 303 and r.headers["location"] == "/staff/login?done=reset"
    login = await client.get(r.headers["location"])
    assert "Your password has been changed" in login.text
    r = await client.post(
        "/staff/login",
        data={"csrf_token": csrf_of(login.text), "email": "nurse@clinic.example", "password": new},
    )
    assert r.status_code == 303


async def test_error_pages_for_people_are_html_and_generic(client: httpx.AsyncClient) -> None:
    html = {"accept": "text/html,application/xhtml+xml"}
    r = await client.get(f"/nothing/{CANARY_GIVEN}", headers=html)
    assert r.status_code == 404 and "<title>Not found" in r.text and CANARY_GIVEN not in r.text
    assert (await client.get("/nothing", headers={"accept": "application/json"})).json() == {
        "detail": "Not Found"
    }
    await client.get("/portal/login")
    r = await client.post("/portal/login", data={"email": CANARY_EMAIL}, headers=html)
    assert r.status_code == 403 and "form may have expired" in r.text and CANARY_EMAIL not in r.text
    r = await client.get("/portal", headers=html)  # redirects stay redirects
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/login")
    r = await client.get("/nothing?lang=es", headers=html)
    assert "Página no encontrada" in r.text

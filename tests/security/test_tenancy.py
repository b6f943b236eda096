"""Clinics are walls: a desk cannot take over, or even see, another clinic's patient.

The security review's story, through the real ASGI app: clinic A's patient; clinic B's front
desk enrols the same address with a wrong name and date of birth. The desk sees one neutral
sentence, the patient stays at A, and a PHI-free email asks the patient to connect. Only the
patient's approval in the portal moves them to B. Afterwards no staff member of A (front
desk, nurse) sees B's threads, messages or unreleased result titles, and every staff or desk
route given B's ids answers 404. Both clinics' admins see the connection in their audit view.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway.admin import apikeys
from gateway.careteam import threads
from gateway.models import (
    AuditEvent,
    Clinic,
    ClinicConnectionRequest,
    Patient,
    Result,
    Thread,
)
from gateway.portal import library, patients
from gateway.portal.results import add_result
from gateway.services import Services
from gateway.web.app import create_app
from tests.portal.helpers import active_patient, csrf_of, patient_sign_in
from tests.portal.mail import deliver
from tests.support.canaries import CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.world import World

STAFF_PASSWORD = "correct horse battery staple 42"
REAL_DOB = date(1971, 2, 3)
NEUTRAL = "This person already has an account; we asked them to connect to your clinic."
A_HELD = "A-HELD-TITLE potassium 9f1c"
B_HELD = "B-HELD-TITLE biopsy 4e2d"
B_BODY = "B-MESSAGE-BODY 77aa"
CSRF_VALUE = re.compile(r'name="csrf_token" value="[^"]+"')


@pytest.fixture
async def app(services: Services) -> Any:
    return create_app(services)


def browser(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def people(app: Any) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One browser per person, each with its own cookies."""
    names = ("patient", "desk_a", "nurse_a", "desk_b", "nurse_b", "admin_a", "admin_b", "admin_c")
    clients = {n: browser(app) for n in names}
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.aclose()


async def staff_sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/staff/login")
    r = await client.post(
        "/staff/login",
        data={"csrf_token": csrf_of(page.text), "email": email, "password": STAFF_PASSWORD},
    )
    assert r.status_code == 303, r.text


async def desk_enrol(
    client: httpx.AsyncClient, name: tuple[str, str], dob: str, email: str
) -> httpx.Response:
    page = await client.get("/staff/desk/enrol")
    assert page.status_code == 200
    return await client.post(
        "/staff/desk/enrol",
        data={
            "csrf_token": csrf_of(page.text),
            "given_name": name[0],
            "family_name": name[1],
            "date_of_birth": dob,
            "email": email,
            "language": "en",
            "id_checked": "yes",
        },
    )


async def current_clinic(services: Services, patient_id: str) -> str | None:
    async with services.sessions() as s:
        row = await patients.current_enrolment(s, patient_id)
        return row.clinic_id if row else None


async def held_result(services: Services, patient_id: str, clinic: Clinic, title: str) -> Result:
    async with services.transaction() as s:
        p = await s.get(Patient, patient_id)
        c = await s.get(Clinic, clinic.id)
        assert p is not None and c is not None
        return await add_result(
            s, services, patient=p, clinic=c, kind="lab", title=title, data={}, actor="test"
        )


def no_patient_data(html: str) -> None:
    for secret in (CANARY_GIVEN, CANARY_FAMILY, REAL_DOB.isoformat(), B_HELD, B_BODY):
        assert secret not in html


async def test_desk_of_another_clinic_cannot_take_over_or_see_a_patient(
    services: Services, world: World, app: Any, people: dict[str, httpx.AsyncClient]
) -> None:
    a = await world.clinic("north", name="Northside Clinic")
    b = await world.clinic("south", name="Southside Clinic")
    c = await world.clinic("east", name="Eastside Clinic")
    made = {}
    for clinic, role, email in (
        (a, "front_desk", "desk-a@north.example"),
        (a, "nurse", "nurse-a@north.example"),
        (a, "clinic_admin", "admin-a@north.example"),
        (b, "front_desk", "desk-b@south.example"),
        (b, "nurse", "nurse-b@south.example"),
        (b, "clinic_admin", "admin-b@south.example"),
        (c, "clinic_admin", "admin-c@east.example"),
    ):
        made[email] = await world.staff(clinic, role=role, email=email)
    patient: Any = await active_patient(
        services,
        a,
        given_name=CANARY_GIVEN,
        family_name=CANARY_FAMILY,
        date_of_birth=REAL_DOB,
        email="pat@example.org",
    )
    a_thread = await world.thread(a, patient, subject="At A", body="A question at A")
    await held_result(services, patient.id, a, A_HELD)
    # A's nurse suggests reading (which can hint at a condition): that stays A's business.
    article = await library.get_article(services, "healthy-plate", "en")
    async with services.transaction() as s:
        nurse_a_id = made["nurse-a@north.example"].id
        await library.assign(
            s, services, patient_id=patient.id, slug=article.slug, actor=f"staff:{nurse_a_id}"
        )
    await deliver(services)  # A's "request received": not what this story looks at

    # -- clinic B's desk enrols the same address with a wrong name and date of birth --------
    desk_b = people["desk_b"]
    await staff_sign_in(desk_b, "desk-b@south.example")
    wrong = await desk_enrol(desk_b, ("Mallory", "Wrongname"), "1999-09-09", "PAT@Example.org")
    assert wrong.status_code == 200 and NEUTRAL in wrong.text
    no_patient_data(wrong.text)
    assert patient.id not in wrong.text and "pat@example.org" not in wrong.text.lower()
    # The real name and date of birth get exactly the same page: typing them confirms nothing.
    right = await desk_enrol(
        desk_b, (CANARY_GIVEN, CANARY_FAMILY), REAL_DOB.isoformat(), "pat@example.org"
    )
    assert right.status_code == 200
    assert CSRF_VALUE.sub("", right.text) == CSRF_VALUE.sub("", wrong.text)

    # Nothing moved or changed; one pending request; B's desk cannot open the patient.
    assert await current_clinic(services, patient.id) == a.id
    async with services.sessions() as s:
        stored = await s.get(Patient, patient.id)
        assert stored is not None
        assert (stored.given_name, stored.family_name) == (CANARY_GIVEN, CANARY_FAMILY)
        assert stored.date_of_birth == REAL_DOB
        requests = (await s.scalars(select(ClinicConnectionRequest))).all()
        people_count = await s.scalar(select(func.count()).select_from(Patient))
    assert people_count == 1
    assert [(r.clinic_id, r.home_clinic_id, r.state) for r in requests] == [(b.id, a.id, "pending")]
    request = requests[0]
    assert (await desk_b.get(f"/staff/desk/patients/{patient.id}")).status_code == 404
    pending_b = await desk_b.get("/staff/desk/pending")
    assert CANARY_GIVEN not in pending_b.text and CANARY_FAMILY not in pending_b.text

    # -- one PHI-free email, in the outbox, asking the patient to connect ------------------
    sent = await deliver(services)
    assert len(sent) == 1, "two enrolments, one request, one email"
    mail = sent[0]
    assert mail.message["To"] == "pat@example.org"
    assert "Southside Clinic" in mail.message["Subject"]
    raw = mail.raw.decode("utf-8", "replace")
    for secret in (
        CANARY_GIVEN,
        CANARY_FAMILY,
        REAL_DOB.isoformat(),
        "Mallory",
        "Wrongname",
        "1999-09-09",
        "Northside",  # nor where the patient is now
        patient.id,
    ):
        assert secret not in raw
    link = mail.link("/t/")

    # -- the patient approves in the portal ---------------------------------------------------
    me = people["patient"]
    await patient_sign_in(me, "pat@example.org")
    landing = await me.get(link)
    assert landing.status_code == 303
    home = await me.get(landing.headers["location"])
    assert "Southside Clinic asks to connect to your account." in home.text
    page = await me.get("/portal/connections")
    assert page.status_code == 200 and f"/portal/connections/{request.id}" in page.text
    # A forged cross-site POST (no CSRF token) moves nobody.
    forged = await me.post(f"/portal/connections/{request.id}", data={"decision": "approve"})
    assert forged.status_code == 403
    assert await current_clinic(services, patient.id) == a.id
    r = await me.post(
        f"/portal/connections/{request.id}",
        data={"csrf_token": csrf_of(page.text), "decision": "approve"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/portal/connections?done=approved"
    assert await current_clinic(services, patient.id) == b.id
    # Decided once: a replay is a plain 404.
    again = await me.post(
        f"/portal/connections/{request.id}",
        data={"csrf_token": csrf_of(page.text), "decision": "decline"},
    )
    assert again.status_code == 404
    assert "asks to connect" not in (await me.get("/portal")).text

    # -- clinic B's work with the patient ----------------------------------------------------
    b_thread = await world.thread(b, patient, subject=CANARY_TEXT, body=B_BODY)
    b_result = await held_result(services, patient.id, b, B_HELD)
    assert b_thread.pool_id is not None

    nurse_b = people["nurse_b"]
    await staff_sign_in(nurse_b, "nurse-b@south.example")
    desk_page = await nurse_b.get(f"/staff/desk/patients/{patient.id}")
    assert desk_page.status_code == 200  # now B's patient
    assert f"<li>{article.title}" not in desk_page.text
    mine = await nurse_b.get(f"/staff/threads/{b_thread.id}")
    assert mine.status_code == 200 and B_HELD in mine.text and B_BODY in mine.text
    assert A_HELD not in mine.text  # B sees none of A's results either
    assert (await nurse_b.get(f"/staff/threads/{a_thread.id}")).status_code == 404

    # -- clinic A's desk and nurse: every route with B's ids is a 404, nothing of B shows ----
    desk_a, nurse_a = people["desk_a"], people["nurse_a"]
    await staff_sign_in(desk_a, "desk-a@north.example")
    await staff_sign_in(nurse_a, "nurse-a@north.example")
    own = await nurse_a.get(f"/staff/threads/{a_thread.id}")
    assert own.status_code == 200 and A_HELD in own.text
    no_patient_data_but_name(own.text)
    for who in (desk_a, nurse_a):
        csrf = csrf_of((await who.get("/staff/desk/enrol")).text)
        gets = [
            f"/staff/threads/{b_thread.id}",
            f"/staff/threads/{b_thread.id}?quick=x",
            f"/staff/pools/{b_thread.pool_id}",
            f"/staff/pools/{b_thread.pool_id}?closed=true",
            f"/staff/desk/patients/{patient.id}",
        ]
        posts = [
            (f"/staff/threads/{b_thread.id}/reply", {"body": "hello"}),
            (f"/staff/threads/{b_thread.id}/reply", {"body": "note", "internal": "1"}),
            (f"/staff/threads/{b_thread.id}/assign", {"staff_id": ""}),
            (f"/staff/threads/{b_thread.id}/close", {}),
            (f"/staff/desk/patients/{patient.id}/invite", {}),
            (f"/staff/desk/patients/{patient.id}/articles", {"slug": "healthy-plate"}),
        ]
        for path in gets:
            r = await who.get(path)
            assert r.status_code == 404, (path, r.status_code)
            no_patient_data(r.text)
        for path, data in posts:
            r = await who.post(path, data={**data, "csrf_token": csrf})
            assert r.status_code == 404, (path, r.status_code)
            no_patient_data(r.text)
        for path in ("/staff", "/staff/desk/pending"):
            r = await who.get(path)
            assert r.status_code == 200, path
            no_patient_data(r.text)
            assert CANARY_TEXT not in r.text
    # Releasing B's held result: a nurse of A gets 404 (a front desk may not release at all).
    r = await nurse_a.post(
        f"/staff/results/{b_result.id}/release",
        data={"csrf_token": csrf_of((await nurse_a.get("/staff/desk/enrol")).text)},
    )
    assert r.status_code == 404
    r = await desk_a.post(
        f"/staff/results/{b_result.id}/release",
        data={"csrf_token": csrf_of((await desk_a.get("/staff/desk/enrol")).text)},
    )
    assert r.status_code in (403, 404) and B_HELD not in r.text
    async with services.sessions() as s:
        still = await s.get(Result, b_result.id)
        b_messages = await threads.messages_of(s, b_thread.id, include_internal=True)
        b_state = await s.get(Thread, b_thread.id)
    assert still is not None and still.released_at is None
    assert [m.body for m in b_messages] == [B_BODY]
    assert b_state is not None and b_state.status == "open"

    # -- both admins see the connection in their audit view; a third clinic does not -------
    for who, email in (("admin_a", "admin-a@north.example"), ("admin_b", "admin-b@south.example")):
        await staff_sign_in(people[who], email)
        audit_page = await people[who].get("/admin/audit")
        assert audit_page.status_code == 200
        for action in ("clinic_connection.request", "clinic_connection.approve"):
            assert action in audit_page.text, (who, action)
        assert request.id in audit_page.text
        no_patient_data(audit_page.text)
    await staff_sign_in(people["admin_c"], "admin-c@east.example")
    other = await people["admin_c"].get("/admin/audit")
    assert other.status_code == 200 and "clinic_connection" not in other.text
    async with services.sessions() as s:
        events = (
            await s.scalars(select(AuditEvent).where(AuditEvent.object_type == "clinic_connection"))
        ).all()
    assert {e.action for e in events} == {
        "clinic_connection.request",
        "clinic_connection.repeat",
        "clinic_connection.approve",
    }
    for e in events:
        assert e.details["clinic_id"] == b.id and e.details["home_clinic_id"] == a.id


def no_patient_data_but_name(html: str) -> None:
    """A's own thread page names its patient, but shows nothing of B's."""
    for secret in (B_HELD, B_BODY, CANARY_TEXT):
        assert secret not in html


async def _connection_rows(services: Services) -> list[ClinicConnectionRequest]:
    async with services.sessions() as s:
        return list(
            (
                await s.scalars(
                    select(ClinicConnectionRequest).order_by(ClinicConnectionRequest.created_at)
                )
            ).all()
        )


async def test_enrolling_again_at_the_same_clinic_keeps_todays_behaviour(
    services: Services, world: World, people: dict[str, httpx.AsyncClient]
) -> None:
    a = await world.clinic("north")
    await world.staff(a, role="front_desk", email="desk-a@north.example")
    patient: Any = await active_patient(services, a, email="pat@example.org")
    desk = people["desk_a"]
    await staff_sign_in(desk, "desk-a@north.example")
    r = await desk_enrol(desk, ("Pat", "Example"), "1980-04-23", "pat@example.org")
    assert r.status_code == 303 and r.headers["location"] == f"/staff/desk/patients/{patient.id}"
    assert await current_clinic(services, patient.id) == a.id
    assert await _connection_rows(services) == []


async def test_another_organisation_never_finds_links_or_asks(
    services: Services, world: World, people: dict[str, httpx.AsyncClient]
) -> None:
    """Other tenants: the same address there is a separate account; nothing crosses."""
    a = await world.clinic("north")
    x = await world.clinic("faraway", org="other-org", name="Faraway Clinic")
    await world.staff(x, role="front_desk", email="desk-x@faraway.example")
    patient: Any = await active_patient(
        services, a, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email="pat@example.org"
    )
    await deliver(services)
    desk = people["desk_b"]
    await staff_sign_in(desk, "desk-x@faraway.example")
    r = await desk_enrol(desk, ("Other", "Person"), "1990-01-01", "pat@example.org")
    assert r.status_code == 303
    new_id = r.headers["location"].rsplit("/", 1)[1]
    assert new_id != patient.id
    page = await desk.get(r.headers["location"])
    assert page.status_code == 200 and "Other Person" in page.text
    no_patient_data(page.text)
    assert (await desk.get(f"/staff/desk/patients/{patient.id}")).status_code == 404
    assert await current_clinic(services, patient.id) == a.id
    assert await _connection_rows(services) == []
    sent = await deliver(services)
    assert [m.message["To"] for m in sent] == ["pat@example.org"]  # X's own invitation
    assert "Faraway Clinic" in sent[0].message["Subject"]
    assert "asks to connect" not in sent[0].message["Subject"]


async def test_declining_changes_nothing_and_the_clinic_cannot_keep_asking(
    services: Services, world: World, people: dict[str, httpx.AsyncClient], clock: Any
) -> None:
    a = await world.clinic("north")
    b = await world.clinic("south", name="Southside Clinic")
    await world.staff(b, role="front_desk", email="desk-b@south.example")
    patient: Any = await active_patient(services, a, email="pat@example.org")
    desk = people["desk_b"]
    await staff_sign_in(desk, "desk-b@south.example")
    r = await desk_enrol(desk, ("Pat", "Example"), "1980-04-23", "pat@example.org")
    assert NEUTRAL in r.text
    assert len(await deliver(services)) == 1

    me = people["patient"]
    await patient_sign_in(me, "pat@example.org")
    page = await me.get("/portal/connections")
    [request] = await _connection_rows(services)
    # Another patient cannot decide it: the request is not theirs (404, nothing changes).
    await active_patient(services, a, email="other@example.org")
    stranger = people["nurse_a"]
    await patient_sign_in(stranger, "other@example.org")
    spage = await stranger.get("/portal/connections")
    assert f"/portal/connections/{request.id}" not in spage.text
    r = await stranger.post(
        f"/portal/connections/{request.id}",
        data={"csrf_token": csrf_of(spage.text), "decision": "approve"},
    )
    assert r.status_code == 404
    r = await me.post(
        f"/portal/connections/{request.id}",
        data={"csrf_token": csrf_of(page.text), "decision": "decline"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=declined")
    assert await current_clinic(services, patient.id) == a.id
    [declined] = await _connection_rows(services)
    assert declined.state == "declined"

    # Asking again right away: the same neutral page, but no new request and no email.
    r = await desk_enrol(desk, ("Pat", "Example"), "1980-04-23", "pat@example.org")
    assert NEUTRAL in r.text
    assert await deliver(services) == []
    assert len(await _connection_rows(services)) == 1
    # A month later the clinic may ask once more.
    clock.advance(days=31)
    desk.cookies.clear()
    await staff_sign_in(desk, "desk-b@south.example")
    r = await desk_enrol(desk, ("Pat", "Example"), "1980-04-23", "pat@example.org")
    assert NEUTRAL in r.text
    assert len(await deliver(services)) == 1
    assert [x.state for x in await _connection_rows(services)] == ["declined", "pending"]


async def test_the_api_and_cli_enrol_the_same_way(
    services: Services, world: World, app: Any, tmp_path: Any
) -> None:
    a = await world.clinic("north")
    b = await world.clinic("south")
    patient: Any = await active_patient(
        services, a, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email="pat@example.org"
    )
    await world.clinic("faraway", org="other-org")
    async with services.transaction() as s:
        now = services.clock.now()
        made = await apikeys.create(
            s, name="ehr", role="integration", org_slug="test-org", now=now, actor="test"
        )
        theirs = await apikeys.create(
            s, name="x", role="integration", org_slug="other-org", now=now, actor="test"
        )
    key, other = made.value, theirs.value
    async with browser(app) as api:
        body = {
            "clinic": b.slug,
            "given_name": "Mallory",
            "family_name": "Wrongname",
            "date_of_birth": "1999-09-09",
            "email": "pat@example.org",
        }
        r = await api.post(
            "/api/v1/patients", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 202, r.text
        assert r.json() == {
            "patient_id": None,
            "status": "connection_requested",
            "created": False,
        }
        no_patient_data(r.text)
        assert patient.id not in r.text
        # Another tenant's key: neither the clinic nor the patient exists for it.
        r = await api.post(
            "/api/v1/patients", json=body, headers={"Authorization": f"Bearer {other}"}
        )
        assert r.status_code == 404
        r = await api.get(
            f"/api/v1/patients/{patient.id}/notifications",
            headers={"Authorization": f"Bearer {other}"},
        )
        assert r.status_code == 404 and patient.id not in r.text
    assert await current_clinic(services, patient.id) == a.id

    # The CLI, from a script at clinic B's side: the same neutral answer, nothing moves.
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[store]\nurl = "{services.config.store.url}"\n[keys]\nfile = "{tmp_path / "keys.json"}"\n'
    )
    argv = [
        "--config", str(config), "patient", "enroll", "--clinic", b.slug,
        "--given-name", "Mallory", "--family-name", "Wrongname", "--dob", "1999-09-09",
        "--email", "pat@example.org",
    ]  # fmt: skip
    code, out, err = await asyncio.to_thread(_main, argv)
    assert code == 0, err
    assert "already has an account; we asked them to connect" in out
    assert patient.id not in out and CANARY_GIVEN not in out + err
    assert await current_clinic(services, patient.id) == a.id
    rows = await _connection_rows(services)
    assert [(r.clinic_id, r.source, r.state) for r in rows] == [(b.id, "api", "pending")]


def _main(argv: list[str]) -> tuple[int, str, str]:
    from gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()

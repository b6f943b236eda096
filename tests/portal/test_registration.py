"""Desk enrolment to a usable account: the email, the link (GET never consumes), terms,
password rules, TOTP, and no token left in the address bar."""

from __future__ import annotations

from datetime import date

import httpx
import pyotp
from sqlalchemy import select

from gateway.models import AuditEvent, Patient, Token
from gateway.portal import enrolment, terms
from gateway.services import Services
from tests.portal.helpers import csrf_of
from tests.portal.mail import deliver
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN
from tests.support.world import FakeClock, World

STRONG = "violet tractor umbrella 93"


async def enrol_at_desk(services: Services, world: World, **kw: object) -> Patient:
    clinic = await world.clinic()
    async with services.transaction() as s:
        result = await enrolment.desk_enrol(
            s,
            services,
            clinic=clinic,
            given_name=str(kw.get("given_name", CANARY_GIVEN)),
            family_name=str(kw.get("family_name", CANARY_FAMILY)),
            date_of_birth=date(1980, 4, 23),
            email=str(kw.get("email", CANARY_EMAIL)),
            language=str(kw.get("language", "en")),
            actor="staff:desk",
        )
    assert result.reasons == ["email not confirmed", "terms not agreed"]
    return result.patient


async def registration_link(services: Services) -> str:
    sent = await deliver(services)
    assert len(sent) == 1
    return sent[0].link("/r/")


async def test_cookieless_get_and_head_five_times_consume_nothing(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    await enrol_at_desk(services, world)
    link = await registration_link(services)
    for _ in range(5):
        async with httpx.AsyncClient(
            transport=client._transport, base_url="http://testserver"
        ) as bare:
            got = await bare.get(link)
            head = await bare.head(link)
        assert got.status_code == 200 and head.status_code == 200
        assert "Riverside Family Clinic" in got.text and terms.CURRENT in got.text
    async with services.sessions() as s:
        row = (await s.scalars(select(Token).where(Token.purpose == "registration"))).one()
        patient = (await s.scalars(select(Patient))).one()
    assert row.consumed_at is None and row.uses == 0
    assert patient.email_verified_at is None and patient.status == "pending"


async def test_registration_refuses_weak_passwords_and_missing_agreement(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    await enrol_at_desk(services, world)
    link = await registration_link(services)
    page = await client.get(link)
    base = {"csrf_token": csrf_of(page.text), "terms_version": terms.CURRENT, "agree": "yes"}
    cases = [
        ({"password": "password123", "confirm": "password123"}, "too easy to guess"),
        (
            {"password": f"{CANARY_GIVEN}1980!", "confirm": f"{CANARY_GIVEN}1980!"},
            "too easy to guess",
        ),
        ({"password": "short", "confirm": "short"}, "at least 10 characters"),
        ({"password": STRONG, "confirm": STRONG + "x"}, "not the same"),
    ]
    for data, reason in cases:
        r = await client.post(link, data={**base, **data})
        assert r.status_code == 400 and reason in r.text, reason
    r = await client.post(link, data={**base, "agree": "", "password": STRONG, "confirm": STRONG})
    assert r.status_code == 400 and "agree to the terms" in r.text
    async with services.sessions() as s:
        regs = select(Token.consumed_at).where(Token.purpose == "registration")
        assert (await s.scalars(regs)).one() is None


async def test_registration_completes_then_redirects_without_the_token(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    patient = await enrol_at_desk(services, world)
    link = await registration_link(services)
    page = await client.get(link)
    r = await client.post(
        link,
        data={
            "csrf_token": csrf_of(page.text),
            "terms_version": terms.CURRENT,
            "agree": "yes",
            "password": STRONG,
            "confirm": STRONG,
        },
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/portal/login?done=registered"
    async with services.sessions() as s:
        row = await s.get(Patient, patient.id)
        assert row is not None
        assert row.status == "active" and row.terms_version == terms.CURRENT
        assert row.email_verified_at == clock.now() and row.terms_agreed_at == clock.now()
        actions = (await s.scalars(select(AuditEvent.action))).all()
    assert "patient.register" in actions
    # The link is spent, and it never signed anyone in.
    assert client.cookies.get("cb_session") is None
    assert (await client.get(link)).status_code == 404
    r = await client.post(link, data={"csrf_token": csrf_of(page.text), "agree": "yes"})
    assert r.status_code == 404


async def test_registration_with_totp_requires_the_code_at_sign_in(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await enrol_at_desk(services, world)
    link = await registration_link(services)
    page = await client.get(link)
    import re

    secret = re.search(r'name="totp_secret" value="([A-Z2-7]+)"', page.text)
    assert secret
    base = {
        "csrf_token": csrf_of(page.text),
        "terms_version": terms.CURRENT,
        "agree": "yes",
        "password": STRONG,
        "confirm": STRONG,
        "totp_secret": secret.group(1),
    }
    r = await client.post(link, data={**base, "code": "000000"})
    assert r.status_code == 400 and "does not match" in r.text
    totp = pyotp.TOTP(secret.group(1))
    r = await client.post(link, data={**base, "code": totp.at(clock.now())})
    assert r.status_code == 303
    login = await client.get("/portal/login")
    creds = {"csrf_token": csrf_of(login.text), "email": CANARY_EMAIL, "password": STRONG}
    assert (await client.post("/portal/login", data=creds)).status_code == 401
    # The code typed at registration is used up; the authenticator's next code signs in.
    used = totp.at(clock.now())
    assert (await client.post("/portal/login", data={**creds, "code": used})).status_code == 401
    clock.advance(seconds=30)
    r = await client.post("/portal/login", data={**creds, "code": totp.at(clock.now())})
    assert r.status_code == 303 and r.headers["location"] == "/portal"


async def test_desk_sees_why_an_account_is_pending(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, role="front_desk", email="desk@clinic.example")
    login = await client.get("/staff/login")
    await client.post(
        "/staff/login",
        data={
            "csrf_token": csrf_of(login.text),
            "email": "desk@clinic.example",
            "password": "correct horse battery staple 42",
        },
    )
    form = await client.get("/staff/desk/enrol")
    assert form.status_code == 200
    data = {
        "csrf_token": csrf_of(form.text),
        "given_name": "Ana",
        "family_name": "Lopez",
        "date_of_birth": "1975-02-01",
        "email": "ana@example.org",
        "language": "es",
    }
    r = await client.post("/staff/desk/enrol", data=data)
    assert r.status_code == 400 and "photo ID" in r.text  # the ID check box is required
    r = await client.post("/staff/desk/enrol", data={**data, "id_checked": "yes"})
    assert r.status_code == 303
    patient_page = await client.get(r.headers["location"])
    assert "not confirmed yet" in patient_page.text and "not agreed yet" in patient_page.text
    pending = await client.get("/staff/desk/pending")
    assert "Lopez" in pending.text
    sent = await deliver(services)
    assert len(sent) == 1 and sent[0].message["To"] == "ana@example.org"
    assert sent[0].message["Content-Language"] in (None, "es")

"""One token per purpose and channel: the registration email's ``/r/`` link and its
``register+`` Reply-To carry different secrets, so someone who sees only the Reply-To (a
forwarded email, a mail log) cannot open the link and choose the password; using either spends
both. And an address token works only at its own clinic's reply domain: another clinic's
domain (another organisation's, or a sibling clinic's) answers 550 at RCPT."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import select

from gateway.models import Notification, Patient, Token
from gateway.outbound.notify import Kind
from gateway.portal import invitations, terms
from gateway.services import Services
from gateway.web.app import create_app
from tests.inbound.helpers import DictResolver, Dns, compose, publish_key
from tests.portal.helpers import csrf_of
from tests.portal.mail import Sent, deliver
from tests.security.mailtrust import (
    PATIENT_EMAIL,
    arcpt_codes,
    asend_raw,
    new_message_email,
    scene,
    smtp_intake,
    with_dns,
)
from tests.support.net import dns_servers
from tests.support.world import World

STRONG = "violet tractor umbrella 93"


@pytest.fixture
def dns() -> Iterator[Dns]:
    resolver = DictResolver()
    with dns_servers(resolver) as port:
        yield Dns(resolver, port)


@pytest.fixture
def svc(services: Services, dns: Dns) -> Services:
    return with_dns(services, dns.port)


@pytest.fixture
async def web(svc: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _invited(svc: Services) -> tuple[Patient, str, str, str]:
    """A patient invited to register: (patient, link token, reply token, reply domain)."""
    world = World(svc)
    clinic = await world.clinic()
    patient = await world.patient(clinic, email=PATIENT_EMAIL)
    async with svc.transaction() as s:
        await invitations.invite(s, svc, patient=patient, clinic=clinic)
    sent = await deliver(svc)
    assert len(sent) == 1
    link_token, reply_token, domain = _tokens_of(sent[0])
    assert domain == clinic.reply_domain
    return patient, link_token, reply_token, domain


def _tokens_of(sent: Sent) -> tuple[str, str, str]:
    link_token = sent.link("/r/").removeprefix("/r/")
    reply_to = str(sent.message["Reply-To"])
    local, _, domain = reply_to.strip("<>").partition("@")
    assert local.startswith("register+")
    return link_token, local.removeprefix("register+"), domain


async def _register_by_link(web: httpx.AsyncClient, token: str) -> httpx.Response:
    page = await web.get(f"/r/{token}")
    assert page.status_code == 200
    return await web.post(
        f"/r/{token}",
        data={
            "csrf_token": csrf_of(page.text),
            "terms_version": terms.CURRENT,
            "agree": "yes",
            "password": STRONG,
            "confirm": STRONG,
        },
    )


async def test_link_and_reply_address_carry_different_tokens(svc, web):
    _patient, link_token, reply_token, domain = await _invited(svc)
    assert link_token != reply_token
    async with svc.sessions() as s:
        rows = {t.purpose: t for t in (await s.scalars(select(Token))).all()}
    reg, reply = rows["registration"], rows["registration_reply"]
    assert reg.pair_id is not None and reg.pair_id == reply.pair_id
    assert reg.clinic_id == reply.clinic_id is not None

    # The reply address's token opens no registration page, and cannot register anyone.
    assert (await web.get(f"/r/{reply_token}")).status_code == 404
    assert (await web.head(f"/r/{reply_token}")).status_code == 404
    page = await web.get(f"/r/{link_token}")
    forged = await web.post(
        f"/r/{reply_token}",
        data={
            "csrf_token": csrf_of(page.text),
            "terms_version": terms.CURRENT,
            "agree": "yes",
            "password": STRONG,
            "confirm": STRONG,
        },
    )
    assert forged.status_code == 404
    async with svc.sessions() as s:
        patient = (await s.scalars(select(Patient))).one()
    assert patient.password_hash == "" and patient.status == "pending"

    # The link's token is no reply address.
    async with smtp_intake(svc) as smtp:
        codes = await arcpt_codes(
            smtp.port,
            "someone@example.net",
            [f"register+{link_token}@{domain}", f"register+{reply_token}@{domain}"],
        )
    assert codes == [550, 250]


async def test_registering_by_link_spends_the_reply_address(svc, web):
    _patient, link_token, reply_token, domain = await _invited(svc)
    r = await _register_by_link(web, link_token)
    assert r.status_code == 303
    async with svc.sessions() as s:
        consumed = {t.purpose: t.consumed_at for t in (await s.scalars(select(Token))).all()}
    assert consumed["registration"] is not None and consumed["registration_reply"] is not None
    async with smtp_intake(svc) as smtp:
        codes = await arcpt_codes(smtp.port, PATIENT_EMAIL, [f"register+{reply_token}@{domain}"])
    assert codes == [550]


async def test_confirming_by_reply_spends_the_link(svc, web, dns):
    patient, link_token, reply_token, domain = await _invited(svc)
    signer = publish_key(dns, "example.org")
    to = f"register+{reply_token}@{domain}"
    raw = signer.sign(compose(sender=PATIENT_EMAIL, to=to, body="Yes, this is my address."))
    async with smtp_intake(svc) as smtp:
        assert await asend_raw(smtp.port, PATIENT_EMAIL, [to], raw) == {}
        await smtp.intake.drain()
    async with smtp_intake(svc) as smtp:  # a fresh listener: no remembered RCPT verdicts
        # Spent: a second reply to the same address is refused at RCPT.
        assert await arcpt_codes(smtp.port, PATIENT_EMAIL, [to]) == [550]
    async with svc.sessions() as s:
        row = await s.get(Patient, patient.id)
        consumed = {t.purpose: t.consumed_at for t in (await s.scalars(select(Token))).all()}
        invites = (
            await s.scalars(
                select(Notification).where(Notification.kind == Kind.REGISTRATION_INVITATION)
            )
        ).all()
    assert row is not None and row.email_verified_at is not None
    assert consumed["registration"] is not None and consumed["registration_reply"] is not None
    assert (await web.get(f"/r/{link_token}")).status_code == 404
    # No password yet, and the spent link was the way to choose one: a fresh invitation.
    assert len(invites) == 2
    fresh = await deliver(svc)
    assert len(fresh) == 1
    new_link, new_reply, _ = _tokens_of(fresh[0])
    assert {new_link, new_reply}.isdisjoint({link_token, reply_token})
    assert (await _register_by_link(web, new_link)).status_code == 303


async def test_tokens_work_only_at_their_own_clinic_reply_domain(svc):
    home = await scene(svc, org="org-a")
    sibling = await home.world.clinic(org="org-a")  # same organisation, another clinic
    stranger = await home.world.clinic(org="org-b")  # another organisation
    _row, addressing = await new_message_email(home)
    assert addressing.reply_to is not None
    locals_ = [addressing.reply_to.partition("@")[0], addressing.mail_from.partition("@")[0]]
    async with svc.transaction() as s:
        await invitations.invite(s, svc, patient=home.patient, clinic=home.clinic)
    sent = [m for m in await deliver(svc) if m.message["Reply-To"] is not None]
    registration = [m for m in sent if str(m.message["Reply-To"]).startswith("register+")]
    assert len(registration) == 1
    _link, reply_token, _domain = _tokens_of(registration[0])
    locals_.append(f"register+{reply_token}")

    async with smtp_intake(svc) as smtp:
        for other in (sibling, stranger):
            codes = await arcpt_codes(
                smtp.port, "x@example.net", [f"{lp}@{other.reply_domain}" for lp in locals_]
            )
            assert codes == [550, 550, 550], other.slug
        at_home = await arcpt_codes(
            smtp.port, "x@example.net", [f"{lp}@{home.clinic.reply_domain}" for lp in locals_]
        )
    assert at_home == [250, 250, 250]

"""A patient answers the registration invitation by email: an authenticated reply confirms the
address; "I agree" to the quoted current terms version records the agreement too."""

from __future__ import annotations

from sqlalchemy import select

from gateway.models import InboundMessage, Patient, QuarantineItem
from gateway.portal import terms
from tests.inbound.helpers import Story, asend, compose, publish_key

INVITATION_QUOTE = (
    "\n\nOn Mon, Mar 2, 2026 at 9:00 AM Riverside Family Clinic wrote:\n"
    "> Welcome! Confirm your address to finish signing up.\n"
    "> Terms of use version: {version}\n"
)


async def _register_address(story: Story) -> str:
    value = await story.token(
        "registration_reply", "patient", story.patient.id, clinic_id=story.clinic.id
    )
    return f"register+{value}@{story.clinic.reply_domain}"


async def _patient(story: Story) -> Patient:
    async with story.services.sessions() as s:
        p = await s.get(Patient, story.patient.id)
        assert p is not None
        return p


async def test_signed_i_agree_reply_confirms_address_and_terms(story, smtp, dns_server):
    signer = publish_key(dns_server, "example.org")
    to = await _register_address(story)
    body = "I agree." + INVITATION_QUOTE.format(version=terms.CURRENT)
    await asend(
        smtp.port,
        "pat@example.org",
        [to],
        signer.sign(compose(sender="pat@example.org", to=to, body=body)),
    )
    await smtp.intake.drain()
    p = await _patient(story)
    assert p.email_verified_at == story.services.clock.now()
    assert (p.terms_version, p.status) == (terms.CURRENT, "active")


async def test_plain_reply_confirms_address_only(story, smtp, dns_server):
    signer = publish_key(dns_server, "example.org")
    to = await _register_address(story)
    body = "Thanks, confirming." + INVITATION_QUOTE.format(version=terms.CURRENT)
    await asend(
        smtp.port,
        "pat@example.org",
        [to],
        signer.sign(compose(sender="pat@example.org", to=to, body=body)),
    )
    await smtp.intake.drain()
    p = await _patient(story)
    assert p.email_verified_at is not None
    assert (p.terms_agreed_at, p.status) == (None, "pending")


async def test_agreeing_to_an_old_terms_version_agrees_to_nothing(story, smtp, dns_server):
    signer = publish_key(dns_server, "example.org")
    to = await _register_address(story)
    body = "I agree" + INVITATION_QUOTE.format(version="2019-01")
    await asend(
        smtp.port,
        "pat@example.org",
        [to],
        signer.sign(compose(sender="pat@example.org", to=to, body=body)),
    )
    await smtp.intake.drain()
    assert (await _patient(story)).terms_agreed_at is None


async def test_unauthenticated_reply_confirms_nothing(story, smtp):
    to = await _register_address(story)
    body = "I agree" + INVITATION_QUOTE.format(version=terms.CURRENT)
    await asend(
        smtp.port, "pat@example.org", [to], compose(sender="pat@example.org", to=to, body=body)
    )
    await smtp.intake.drain()
    p = await _patient(story)
    assert (p.email_verified_at, p.terms_agreed_at) == (None, None)
    async with story.services.sessions() as s:
        assert (await s.scalars(select(QuarantineItem.reason))).all() == ["not_authenticated"]
        row = await s.scalar(select(InboundMessage))
        assert row is not None and row.handler == "registration"

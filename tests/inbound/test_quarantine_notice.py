"""Nobody is left in silence: a patient whose emailed reply is quarantined hears, once a day,
at the address on file, that it was not delivered and how to send it securely.

The story: a patient (canary name) has a conversation; an unsigned reply arrives over real SMTP
and is quarantined. Delivery writes the outbox (the test config's maildir): the patient's
enrolled address gets exactly one PHI-free email linking to the conversation; the forger who
sent the suspect message gets nothing; a second bad reply the same day adds no email; the next
day one more is sent.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select

from gateway import tokens
from gateway.careteam import threads
from gateway.models import Notification, QuarantineItem
from gateway.outbound.delivery import DeliveryPart
from gateway.outbound.notify import Kind
from gateway.services import Services
from tests.inbound.helpers import Story, asend, compose
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.world import World

SUBJECT = "CANARY-SUBJECT-91 about my rash"
FORGER = "mallory@forger.example"


async def _story(services: Services) -> Story:
    world = World(services)
    clinic = await world.clinic()
    await world.staff(clinic, role="nurse")
    patient = await world.patient(
        clinic, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email=CANARY_EMAIL
    )
    async with services.transaction() as s:
        thread = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject=SUBJECT,
            body=CANARY_TEXT,
            actor=f"patient:{patient.id}",
        )
    return Story(services, world, clinic, patient, thread)


async def _deliver(services: Services) -> None:
    part = DeliveryPart(services)
    try:
        while await part.run_once("test-worker"):
            pass
    finally:
        await part.transport.close()


def _outbox(services: Services) -> dict[str, EmailMessage]:
    directory = Path(services.config.path(services.config.delivery.maildir))
    out = {}
    for path in sorted(directory.glob("*.eml")) if directory.exists() else []:
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out[path.stem] = msg
    return out


async def _notices(services: Services) -> list[Notification]:
    async with services.sessions() as s:
        rows = await s.scalars(
            select(Notification)
            .where(Notification.kind == str(Kind.REPLY_NOT_DELIVERED))
            .order_by(Notification.created_at)
        )
        return list(rows)


def _decoded(msg: EmailMessage) -> str:
    parts = [f"{k}: {v}" for k, v in msg.items()]
    parts += [str(p.get_content()) for p in msg.walk() if not p.is_multipart()]
    return "\n".join(parts)


async def _bad_reply(story: Story, smtp, sender: str, body: str) -> None:
    to = await story.reply_address()
    raw = compose(sender=sender, to=to, body=body, subject=f"Re: {SUBJECT}")
    refused = await asend(smtp.port, sender, [to], raw)
    assert refused == {}
    await smtp.intake.drain()


async def test_unverified_reply_tells_the_enrolled_patient_once_a_day(
    inbound_services, smtp, clock
):
    services = inbound_services
    story = await _story(services)

    # An unsigned reply from a forger's address, then one claiming the patient's own address.
    await _bad_reply(story, smtp, FORGER, f"{CANARY_TEXT} forged")
    await _deliver(services)
    async with services.sessions() as s:
        reasons = list((await s.scalars(select(QuarantineItem.reason))).all())
    assert reasons == ["not_authenticated"]

    [notice] = await _notices(services)
    assert notice.patient_id == story.patient.id and notice.recipient == CANARY_EMAIL
    outbox = _outbox(services)
    assert notice.id in outbox, "the notice must be delivered, not just queued"
    email = outbox[notice.id]
    assert email["To"] is not None and CANARY_EMAIL in str(email["To"])
    # Nothing in the outbox is addressed to the forger.
    assert all(FORGER not in str(m["To"]) for m in outbox.values())

    text = _decoded(email)
    assert "could not verify your email reply" in text
    assert "Open your conversation" in text
    for canary in (CANARY_GIVEN, CANARY_FAMILY, CANARY_TEXT, "CANARY-PHI", SUBJECT, "rash"):
        assert canary not in text
    # No Reply-To: the answer is to send it securely, not to email again.
    assert email["Reply-To"] is None
    # The link opens this very conversation after sign-in (a view_thread token).
    base = services.config.web.base_url.rstrip("/")
    [value] = set(re.findall(re.escape(base) + r"/t/([A-Za-z0-9_-]+)", text))
    async with services.sessions() as s:
        token = await tokens.peek(s, value, "view_thread", clock.now())
        assert token is not None
        assert token.subject_id == story.patient.id
        assert token.data.get("thread_id") == story.thread.id

    # A second bad reply the same day (this time claiming the patient's address): no second
    # notice.
    clock.advance(hours=2)
    await _bad_reply(story, smtp, CANARY_EMAIL, "Second try, still unsigned.")
    await _deliver(services)
    assert len(await _notices(services)) == 1
    async with services.sessions() as s:
        assert len((await s.scalars(select(QuarantineItem))).all()) == 2

    # The next day, one more.
    clock.advance(days=1)
    await _bad_reply(story, smtp, FORGER, "Third try.")
    await _deliver(services)
    notices = await _notices(services)
    assert len(notices) == 2
    assert notices[1].recipient == CANARY_EMAIL
    assert notices[1].id in _outbox(services)


async def test_no_notice_when_the_token_names_no_patient(inbound_services, smtp):
    services = inbound_services
    story = await _story(services)
    # A staff member's reply token at the same address shape: nobody to tell.
    nurse = await story.world.staff(story.clinic, role="nurse")
    value = await story.token("reply_address", "staff", nurse.id, thread_id=story.thread.id)
    to = f"reply+{value}@{story.clinic.reply_domain}"
    await asend(smtp.port, FORGER, [to], compose(sender=FORGER, to=to, body="hello"))
    await smtp.intake.drain()
    async with services.sessions() as s:
        assert (await s.scalars(select(QuarantineItem))).first() is not None
    assert await _notices(services) == []

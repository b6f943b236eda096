"""A patient answers a notification by email: only authenticated mail from the address on file
enters the thread; everything else is quarantined with a reason and never filed."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway.careteam import threads
from gateway.models import InboundMessage, Notification, QuarantineItem
from handlers import ROUTING
from tests.inbound.helpers import Story, asend, compose, publish_key

QUOTED = (
    "Thanks, the new dose is working well.\n\n"
    "--\nPat\nSent from my phone\n\n"
    "On Mon, Mar 2, 2026 at 9:00 AM Riverside Family Clinic <noreply@clinic.example> wrote:\n"
    "> You have a new message from your care team.\n"
    "> CANARY-QUOTED-HISTORY sign in to read it.\n"
)


async def _patient_messages(story: Story) -> list[str]:
    async with story.services.sessions() as s:
        rows = await threads.messages_of(s, story.thread.id, include_internal=False)
        return [m.body for m in rows]


async def _quarantine_reasons(story: Story) -> list[str]:
    async with story.services.sessions() as s:
        return list((await s.scalars(select(QuarantineItem.reason))).all())


async def _notifications_to_patient(story: Story) -> int:
    async with story.services.sessions() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.patient_id == story.patient.id)
        )
        return int(n or 0)


async def test_signed_reply_from_enrolled_address_lands_in_thread(story, smtp, dns_server):
    signer = publish_key(dns_server, "example.org")
    to = await story.reply_address()
    raw = signer.sign(compose(sender="Pat <pat@example.org>", to=to, body=QUOTED))
    before = await _notifications_to_patient(story)

    refused = await asend(smtp.port, "pat@example.org", [to], raw)
    await smtp.intake.drain()

    assert refused == {}
    bodies = await _patient_messages(story)
    assert "Thanks, the new dose is working well." in bodies
    assert all("CANARY-QUOTED-HISTORY" not in b and "Sent from my phone" not in b for b in bodies)
    async with story.services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
        assert row is not None and row.state == "filed" and row.thread_id == story.thread.id
        assert row.auth["dkim"] == "pass" and row.auth["aligned"] is True
    # The patient gets the PHI-free acknowledgement queued by the thread functions.
    assert await _notifications_to_patient(story) == before + 1
    assert await _quarantine_reasons(story) == []


async def test_broken_signature_is_quarantined(story, smtp, dns_server):
    signer = publish_key(dns_server, "example.org")
    to = await story.reply_address()
    raw = signer.sign(compose(sender="pat@example.org", to=to, body="Original words."))
    tampered = raw.replace(b"Original words.", b"Altered words!!")
    assert tampered != raw

    await asend(smtp.port, "pat@example.org", [to], tampered)
    await smtp.intake.drain()

    assert await _quarantine_reasons(story) == ["not_authenticated"]
    assert "Altered words!!" not in await _patient_messages(story)


async def test_spoofed_from_is_quarantined(story, smtp, dns_server):
    # Signed correctly, but by another domain than the From address claims.
    attacker = publish_key(dns_server, "attacker.example")
    to = await story.reply_address()
    raw = attacker.sign(compose(sender="pat@example.org", to=to, body="Send my records here."))

    await asend(smtp.port, "x@attacker.example", [to], raw)
    await smtp.intake.drain()

    assert await _quarantine_reasons(story) == ["not_authenticated"]
    assert "Send my records here." not in await _patient_messages(story)


async def test_other_patients_token_is_quarantined(story, smtp, dns_server):
    other = await story.world.patient(story.clinic, email="other@example.net")
    signer = publish_key(dns_server, "example.net")
    to = await story.reply_address()  # the first patient's token
    raw = signer.sign(compose(sender="other@example.net", to=to, body="Not my thread."))
    assert other.id != story.patient.id

    await asend(smtp.port, "other@example.net", [to], raw)
    await smtp.intake.drain()

    assert await _quarantine_reasons(story) == ["sender_not_patient"]
    assert "Not my thread." not in await _patient_messages(story)


async def test_out_of_office_answer_is_not_filed_or_answered(story, smtp, dns_server):
    signer = publish_key(dns_server, "example.org")
    to = await story.reply_address()
    raw = signer.sign(
        compose(
            sender="pat@example.org",
            to=to,
            subject="Out of Office: You have a new message",
            body="I am away until Monday.",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    before_msgs = await _patient_messages(story)
    before_notes = await _notifications_to_patient(story)

    await asend(smtp.port, "pat@example.org", [to], raw)
    await smtp.intake.drain()

    assert await _patient_messages(story) == before_msgs
    assert await _notifications_to_patient(story) == before_notes  # no reply of any kind
    async with story.services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
        assert row is not None and (row.state, row.handler) == ("ignored", "autoreply")
        assert row.detail == "auto_submitted"
    assert await _quarantine_reasons(story) == []


async def test_automated_mail_is_capped_per_sender_per_day(
    make_intake, story, dns_server, with_config
):
    from gateway.inbound.auth import ReceivedEnvelope
    from gateway.inbound.routing import resolve_recipient

    services = with_config(story.services, inbound={"max_automated_per_day": 2})
    intake = make_intake(services)
    to = await story.reply_address()
    async with services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, to, services.clock.now())
    assert target is not None
    for i in range(4):
        raw = compose(
            sender="pat@example.org", to=to, body=f"away {i}", headers={"X-Autoreply": "yes"}
        )
        await intake.receive(
            raw, source="smtp", targets=[target], envelope=ReceivedEnvelope("pat@example.org")
        )
        await intake.drain()
    async with services.sessions() as s:
        rows = (await s.scalars(select(InboundMessage).order_by(InboundMessage.received_at))).all()
        kept = [r for r in rows if r.raw]
        assert [r.state for r in rows] == ["ignored"] * 4
        assert len(kept) == 2
        assert [r.detail for r in rows if not r.raw] == ["x_autoreply_over_daily_cap"] * 2

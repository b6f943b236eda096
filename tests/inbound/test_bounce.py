"""Bounces to ``bounce+TOKEN@``: real-looking reports from Postfix, Gmail, Exchange, Exim,
qmail and sendmail are classified as flufl.bounce labels them, each traced to its notification;
a hard bounce asks the clinic's staff to contact the patient another way."""

from __future__ import annotations

from pathlib import Path

import pytest
from flufl.bounce import all_failures
from sqlalchemy import delete, select

from gateway.inbound.parsing import parse_sync
from gateway.inbound.routing import resolve_recipient
from gateway.models import InboundMessage, Notification, Patient, Pool, PoolMember
from gateway.outbound.notify import Kind, Notice, enqueue
from handlers import ROUTING
from tests.inbound.helpers import Story, asend, compose

SAMPLES = Path(__file__).parent / "bounces"
EXPECTED = {
    "postfix-user-unknown": "hard",
    "gmail-policy-block": "policy",
    "exchange-delayed": "soft",
    "exim-failed": "hard",
    "qmail-failed": "hard",
    "sendmail-user-unknown": "hard",
}


async def _notification(story: Story) -> tuple[Notification, str]:
    async with story.services.transaction() as s:
        row = await enqueue(
            s,
            story.services.keyring,
            notice=Notice(kind=Kind.NEW_MESSAGE, thread_id=story.thread.id),
            clinic_id=story.clinic.id,
            recipient=story.patient.email,
            now=story.services.clock.now(),
            patient_id=story.patient.id,
        )
        # Delivered to the patient's address: only a sent notification can bounce.
        row.state, row.sent_at, row.attempts = "sent", story.services.clock.now(), 1
        row.message_id = f"<{row.id}.0@clinic.example>"
    token = await story.token("bounce_address", "notification", row.id)
    return row, f"bounce+{token}@{story.clinic.reply_domain}"


def _sample(name: str, bounce_address: str) -> bytes:
    text = (
        (SAMPLES / f"{name}.eml").read_bytes().replace(b"BOUNCE_ADDRESS", bounce_address.encode())
    )
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _flufl_label(raw: bytes) -> str:
    temporary, permanent = all_failures(parse_sync(raw))
    assert temporary or permanent, "flufl.bounce must recognise the sample"
    return "permanent" if permanent else "temporary"


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_bounce_samples_are_classified_and_traced(make_intake, story, name):
    services = story.services
    notification, address = await _notification(story)
    others = [await story.world.staff(story.clinic, role="front_desk")]
    async with services.transaction() as s:
        pool = await s.scalar(select(Pool).where(Pool.clinic_id == story.clinic.id).limit(1))
        assert pool is not None
        # A clinic's first staff member starts in every pool: take the story's nurse out,
        # so they are the colleague outside every pool.
        await s.execute(delete(PoolMember).where(PoolMember.staff_id != others[0].id))
        await s.merge(PoolMember(pool_id=pool.id, staff_id=others[0].id))
    raw = _sample(name, address)
    label = _flufl_label(raw)
    assert (label == "permanent") == (EXPECTED[name] in ("hard", "policy"))

    intake = make_intake(services)
    async with services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, address, services.clock.now())
    assert target is not None and target.route == "bounce"
    await intake.receive(raw, source="smtp", targets=[target])
    await intake.drain()

    async with services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
        n = await s.get(Notification, notification.id)
        patient = await s.get(Patient, story.patient.id)
        contact = (
            await s.scalars(select(Notification).where(Notification.kind == Kind.CONTACT_PATIENT))
        ).all()
    assert row is not None and (row.state, row.handler) == ("bounce", "bounce")
    assert row.detail is not None and row.detail.startswith(EXPECTED[name])
    assert n is not None and n.last_error is not None and EXPECTED[name] in n.last_error
    assert n.state == ("bounced" if label == "permanent" else "sent")
    assert patient is not None and patient.deliverability == EXPECTED[name]
    if EXPECTED[name] == "hard":
        # One PHI-free "contact this patient another way" notice per clinic staff member.
        # Only the pool's staff: the nurse outside every pool is not asked.
        assert {c.staff_id for c in contact} == {others[0].id}
        assert all(c.patient_id is None and c.context["kind"] == "contact_patient" for c in contact)
    else:
        assert contact == []


async def test_bounce_over_smtp_with_null_sender(story, smtp):
    notification, address = await _notification(story)
    raw = _sample("postfix-user-unknown", address)
    assert await asend(smtp.port, "", [address], raw) == {}
    await smtp.intake.drain()
    async with story.services.sessions() as s:
        n = await s.get(Notification, notification.id)
    assert n is not None and n.state == "bounced"


async def test_soft_bounce_never_softens_a_hard_state(make_intake, story):
    services = story.services
    intake = make_intake(services)
    for name in ("postfix-user-unknown", "exchange-delayed"):
        _n, address = await _notification(story)
        async with services.sessions() as s:
            target = await resolve_recipient(s, ROUTING, address, services.clock.now())
        assert target is not None
        await intake.receive(_sample(name, address), source="smtp", targets=[target])
        await intake.drain()
    async with services.sessions() as s:
        patient = await s.get(Patient, story.patient.id)
    assert patient is not None and patient.deliverability == "hard"


async def test_out_of_office_to_bounce_address_is_ignored(make_intake, story):
    services = story.services
    notification, address = await _notification(story)
    raw = compose(
        sender="pat@example.org",
        to=address,
        subject="Automatic reply: You have a new message",
        body="I am out of the office until Monday.",
        headers={"Auto-Submitted": "auto-replied"},
    )
    intake = make_intake(services)
    async with services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, address, services.clock.now())
    assert target is not None
    await intake.receive(raw, source="smtp", targets=[target])
    await intake.drain()
    async with services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
        n = await s.get(Notification, notification.id)
        patient = await s.get(Patient, story.patient.id)
    assert row is not None and (row.state, row.detail) == ("ignored", "not_a_bounce")
    assert n is not None and n.state == "sent" and n.last_error is None
    assert patient is not None and patient.deliverability == "ok"

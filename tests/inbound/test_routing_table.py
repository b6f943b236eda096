"""The routing table is the handlers' data, found through an entry point: the gateway never
names a handler, and a clinician's reply by email is routed (and recorded) as a staff reply."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.careteam import staff_replies
from gateway.inbound import plugins
from gateway.inbound.auth import ReceivedEnvelope
from gateway.inbound.routing import Target, resolve_recipient
from gateway.models import Clinic, InboundMessage, Token
from handlers import ROUTING, reply, staff_reply
from tests.inbound.helpers import Story, asend, compose, publish_key

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def test_the_installed_entry_point_loads_the_handlers_table() -> None:
    assert plugins.load_routing() is ROUTING
    names = [r.name for r in ROUTING.routes]
    assert names == ["bounce", "register", "staff_reply", "reply", "postmaster", "abuse"]


def test_no_installed_table_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    with pytest.raises(plugins.RoutingNotInstalledError, match=r"carebridge\.routing"):
        plugins.load_routing()


async def _staff_reply_address(story: Story) -> tuple[str, str]:
    """A clinician of the story's clinic, with staff email replies on: (their address, the
    reply address of their notice about the story's thread)."""
    clinic = story.clinic
    doctor = await story.world.staff(
        clinic, role="provider", email=f"dr.bo@{clinic.sending_domain}"
    )
    services = story.services
    async with services.transaction() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None
        c.staff_email_replies = True
        address = await staff_replies.reply_address(
            s, services, clinic=c, staff=doctor, thread_id=story.thread.id, now=services.clock.now()
        )
    assert address is not None
    return doctor.email, address


async def test_a_staff_reply_is_routed_and_recorded_as_staff_reply(story, smtp, dns_server):
    sender, to = await _staff_reply_address(story)
    async with story.services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, to, story.services.clock.now())
    assert target is not None and target.route == "staff_reply"

    signer = publish_key(dns_server, story.clinic.sending_domain or "")
    raw = signer.sign(compose(sender=sender, to=to, body="Yes, with food is fine."))
    assert await asend(smtp.port, sender, [to], raw) == {}
    await smtp.intake.drain()

    async with story.services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
    assert row is not None
    assert (row.route, row.handler, row.state) == ("staff_reply", "staff_reply", "filed")
    assert row.thread_id == story.thread.id


async def test_a_patient_reply_address_keeps_the_reply_route(story):
    to = await story.reply_address()
    async with story.services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, to, story.services.clock.now())
    assert target is not None and target.route == "reply"
    staff_route = ROUTING.named("staff_reply")
    assert staff_route is not None
    assert ROUTING.for_subject(staff_route, "patient").handler is reply.handler
    assert ROUTING.for_subject(staff_route, "staff").handler is staff_reply.handler


async def test_a_staff_reply_stored_under_the_reply_route_reaches_the_staff_handler(
    story, make_intake
):
    # Stored before staff replies had a route of their own (or held in quarantine since):
    # processing settles the route by the token's subject just as RCPT now does.
    sender, to = await _staff_reply_address(story)
    async with story.services.sessions() as s:
        token_id = (await resolve_recipient(s, ROUTING, to, story.services.clock.now())).token_id
        assert (await s.get(Token, token_id)).subject_kind == "staff"
    intake = make_intake(story.services)
    stored = await intake.receive(
        compose(sender=sender, to=to, body="Seen."),
        source="smtp",
        targets=[Target("reply", story.clinic.id, token_id)],
        envelope=ReceivedEnvelope(sender),
        process=False,
    )
    (inbound_id,) = stored.inbound_ids
    await intake.process(inbound_id)
    async with story.services.sessions() as s:
        row = await s.get(InboundMessage, inbound_id)
    assert row is not None and (row.route, row.handler) == ("reply", staff_reply.handler.name)

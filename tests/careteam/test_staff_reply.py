"""A clinician answers a staff notice by email: filed like a portal answer only when it is
DKIM-aligned, from the clinic's own domain and the staff member's own address."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway import tokens
from gateway.careteam import staff_replies, threads
from gateway.inbound.auth import AuthVerdict, ReceivedEnvelope
from gateway.inbound.handling import Context, Filed, Quarantine
from gateway.inbound.parsing import ParsedMail, Sender, parse_mail
from gateway.models import Clinic, InboundMessage, Notification, Thread, Token
from gateway.outbound.notify import Kind
from gateway.services import Services
from handlers.staff_reply import handler
from tests.support.world import FakeClock, World

GOOD = AuthVerdict(dkim="pass", dkim_aligned=True, from_domain="north.example")


def _mail(sender: str, text: str) -> ParsedMail:
    raw = (
        f"From: {sender}\r\nTo: x@reply.north.example\r\nSubject: Re: notice\r\n\r\n"
        f"{text}\r\n\r\nOn Mon, someone wrote:\r\n> quoted history\r\n"
    ).encode()
    return parse_mail(raw)


async def _setup(services: Services, world: World, *, on: bool = True) -> tuple[Clinic, str, str]:
    clinic = await world.clinic(
        "north", reply_domain="reply.north.example", sending_domain="north.example"
    )
    doctor = await world.staff(clinic, role="provider", email="dr.bo@north.example")
    patient = await world.patient(clinic)
    async with services.transaction() as s:
        c = await s.get(Clinic, clinic.id)
        assert c is not None
        c.staff_email_replies = on
        t = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=c,
            request_type="question",
            subject="q",
            body="b",
            actor="test",
        )
        address = await staff_replies.reply_address(
            s, services, clinic=c, staff=doctor, thread_id=t.id, now=services.clock.now()
        )
    if on:
        assert address is not None and address.endswith("@reply.north.example")
    else:
        assert address is None
    return clinic, t.id, address or ""


async def _handle(
    services: Services, address: str, sender: str, verdict: AuthVerdict = GOOD, text: str = "Done."
) -> object:
    token_value = address.split("@")[0].removeprefix("reply+")
    async with services.sessions() as s:
        token = await tokens.peek(s, token_value, "reply_address", services.clock.now())
    assert token is not None
    return await _handle_token(services, token, sender, verdict, text)


async def _handle_token(
    services: Services,
    token: Token,
    sender: str,
    verdict: AuthVerdict = GOOD,
    text: str = "Done.",
    routed: object = handler,
) -> object:
    async with services.transaction() as s:
        token = await s.merge(token)
        clinic = await s.scalar(select(Clinic).where(Clinic.slug == "north"))
        ctx = Context(
            services=services,
            session=s,
            inbound=InboundMessage(source="smtp", raw=b"", size=0),
            mail=_mail(sender, text),
            sender=Sender(sender, sender.split("@")[1]),
            verdict=verdict,
            envelope=ReceivedEnvelope(),
            token=token,
            clinic=clinic,
            now=services.clock.now(),
        )
        return await routed.handle(ctx)  # type: ignore[attr-defined]


async def test_aligned_staff_reply_is_filed_like_a_portal_answer(
    services: Services, world: World, clock: FakeClock
) -> None:
    _, thread_id, address = await _setup(services, world)
    clock.advance(minutes=10)
    outcome = await _handle(services, address, "dr.bo@north.example", text="Take it twice a day.")
    assert isinstance(outcome, Filed) and outcome.thread_id == thread_id
    async with services.sessions() as s:
        msgs = await threads.messages_of(s, thread_id, include_internal=False)
        assert msgs[-1].body == "Take it twice a day." and msgs[-1].source == "email"
        t = await s.get(Thread, thread_id)
        assert t is not None and t.sla_due_at is None
        kinds = list(await s.scalars(select(Notification.kind)))
        assert str(Kind.NEW_MESSAGE) in kinds


async def test_routed_reply_address_reaches_the_staff_handler(
    services: Services, world: World
) -> None:
    # Patients and staff answer at the same reply+TOKEN@ shape; the routing table tells them
    # apart by the token's subject at RCPT time, so a staff token reaches its own route and
    # is never judged as a patient's reply.
    from gateway.inbound.routing import resolve_recipient
    from handlers import ROUTING

    _, thread_id, address = await _setup(services, world)
    async with services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, address, services.clock.now())
        assert target is not None and target.token_id is not None
        token = await s.get(Token, target.token_id)
    assert target.route == "staff_reply" and token is not None
    route = ROUTING.named(target.route)
    assert route is not None and route.handler is handler
    patient_route = ROUTING.named("reply")
    assert patient_route is not None
    wrong = await _handle_token(
        services, token, "dr.bo@north.example", routed=patient_route.handler
    )
    assert isinstance(wrong, Quarantine) and wrong.reason == "token_invalid"
    outcome = await _handle_token(
        services, token, "dr.bo@north.example", text="Seen, all fine.", routed=route.handler
    )
    assert isinstance(outcome, Filed) and outcome.thread_id == thread_id


@pytest.mark.parametrize(
    ("sender", "verdict", "reason"),
    [
        ("dr.bo@north.example", AuthVerdict(spf="pass", spf_aligned=True), "not_authenticated"),
        ("dr.bo@north-example.com", GOOD, "sender_not_clinic"),
        ("someone@north.example", GOOD, "sender_not_staff"),
    ],
)
async def test_unaligned_or_foreign_replies_are_quarantined(
    services: Services, world: World, sender: str, verdict: AuthVerdict, reason: str
) -> None:
    _, thread_id, address = await _setup(services, world)
    outcome = await _handle(services, address, sender, verdict)
    assert isinstance(outcome, Quarantine) and outcome.reason == reason
    async with services.sessions() as s:
        assert len(await threads.messages_of(s, thread_id, include_internal=True)) == 1


async def test_off_by_default_and_refused_when_off(services: Services, world: World) -> None:
    fresh = await world.clinic("south")
    assert fresh.staff_email_replies is False
    _, thread_id, _ = await _setup(services, world, on=True)
    async with services.transaction() as s:
        c = await s.scalar(select(Clinic).where(Clinic.slug == "north"))
        assert c is not None
        c.staff_email_replies = False
    # A token minted while it was on is refused once the clinic turns it off.
    async with services.sessions() as s:
        row = await s.scalar(select(Token).where(Token.subject_kind == "staff"))
        assert row is not None
    outcome = await _handle_token(services, row, "dr.bo@north.example")
    assert isinstance(outcome, Quarantine) and outcome.reason == "staff_replies_off"
    async with services.sessions() as s:
        assert len(await threads.messages_of(s, thread_id, include_internal=True)) == 1

"""Step 2's guarantees: a handler that fails leaves nothing half-written, is retried, and after
the last attempt the message is quarantined (never lost, never filed twice)."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway.inbound.auth import AuthVerdict, ReceivedEnvelope
from gateway.inbound.handling import Context, Outcome
from gateway.inbound.parsing import parse_mail
from gateway.inbound.processing import MAX_ATTEMPTS, Prepared, apply_one
from gateway.inbound.routing import Target
from gateway.models import InboundMessage, QuarantineItem, Thread
from handlers import ROUTING
from tests.inbound.helpers import Story, compose


class Exploding:
    name = "exploding"

    def __init__(self, clinic_id: str, patient_id: str) -> None:
        self.clinic_id, self.patient_id = clinic_id, patient_id

    async def handle(self, ctx: Context) -> Outcome:
        # Writes something first, as a real handler would, then fails.
        thread = Thread(
            clinic_id=self.clinic_id, patient_id=self.patient_id, subject="half", status="open"
        )
        ctx.session.add(thread)
        await ctx.session.flush()
        raise RuntimeError("CANARY-PHI-7f3a in an exception message")


async def test_failing_handler_is_rolled_back_retried_then_quarantined(story: Story, make_intake):
    services = story.services
    intake = make_intake(services)
    to = f"postmaster@{story.clinic.reply_domain}"
    stored = await intake.receive(
        compose(sender="ops@example.org", to=to, body="boom"),
        source="smtp",
        targets=[Target("postmaster", story.clinic.id, None)],
        process=False,
    )
    (inbound_id,) = stored.inbound_ids
    async with services.sessions() as s:
        threads_before = await s.scalar(select(func.count()).select_from(Thread))

    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        p = Prepared(
            inbound_id,
            ReceivedEnvelope(),
            handler=Exploding(story.clinic.id, story.patient.id),
            mail=None,
            verdict=AuthVerdict(),
        )
        async with services.sessions() as s:
            row = await s.get(InboundMessage, inbound_id)
            assert row is not None
            p.mail = parse_mail(row.raw)
        async with services.transaction() as session:
            outcomes.append(await apply_one(services, ROUTING, session, p, services.clock.now()))

    assert outcomes[:-1] == [(None, True)] * (MAX_ATTEMPTS - 1)  # retried
    final, again = outcomes[-1]
    assert again is False and final is not None
    async with services.sessions() as s:
        row = await s.get(InboundMessage, inbound_id)
        items = (await s.scalars(select(QuarantineItem))).all()
        threads_after = await s.scalar(select(func.count()).select_from(Thread))
    assert row is not None and (row.state, row.attempts) == ("quarantined", MAX_ATTEMPTS)
    assert [(i.reason, i.detail) for i in items] == [
        ("processing_error", "exploding raised RuntimeError")
    ]
    assert threads_after == threads_before  # the half-written thread never survived

"""Mail already checked upstream (IMAP): its Authentication-Results header is believed only when
stamped by ``[inbound] trusted_authserv_id``; a forged one from anyone else changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.careteam import threads
from gateway.inbound.routing import resolve_recipient
from gateway.models import InboundMessage
from handlers import ROUTING
from tests.inbound.helpers import compose

HEADER = "{id}; dkim=pass header.d=example.org header.s=s1; spf=none smtp.mailfrom=example.org"


@pytest.mark.parametrize(
    ("stamped_by", "expected"),
    [("mx.clinic-trusted.example", "filed"), ("mx.forger.example", "quarantined")],
)
async def test_authentication_results_trusted_only_from_configured_id(
    story, make_intake, with_config, stamped_by, expected
):
    services = with_config(
        story.services, inbound={"trusted_authserv_id": "mx.clinic-trusted.example"}
    )
    to = await story.reply_address()
    raw = compose(
        sender="pat@example.org",
        to=to,
        body=f"checked upstream by {stamped_by}",
        headers={"Authentication-Results": HEADER.format(id=stamped_by)},
    )
    intake = make_intake(services)
    async with services.sessions() as s:
        target = await resolve_recipient(s, ROUTING, to, services.clock.now())
    assert target is not None
    await intake.receive(raw, source="imap", targets=[target])
    await intake.drain()

    async with services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
        bodies = [
            m.body for m in await threads.messages_of(s, story.thread.id, include_internal=False)
        ]
    assert row is not None and row.state == expected
    assert (f"checked upstream by {stamped_by}" in bodies) == (expected == "filed")
    if expected == "filed":
        assert row.auth["sources"] == ["local", "trusted-header"]
    else:
        assert row.auth["sources"] == ["local"] and row.auth["dkim"] == "none"

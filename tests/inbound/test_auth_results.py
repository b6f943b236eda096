"""Mail already checked upstream (IMAP): its Authentication-Results header is believed only when
stamped by ``[inbound] trusted_authserv_id`` at the top of the header, where the mailbox's server
writes it; a forged one from anyone else, or one buried among the sender's fields, changes
nothing. (SMTP peers: tests/security/test_mail_trust.py.)"""

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
    ("stamped_by", "on_top", "expected"),
    [
        ("mx.clinic-trusted.example", True, "filed"),
        ("mx.forger.example", True, "quarantined"),
        ("mx.clinic-trusted.example", False, "quarantined"),
    ],
)
async def test_authentication_results_trusted_only_from_configured_id(
    story, make_intake, with_config, stamped_by, on_top, expected
):
    services = with_config(
        story.services, inbound={"trusted_authserv_id": "mx.clinic-trusted.example"}
    )
    to = await story.reply_address()
    stamp = f"Authentication-Results: {HEADER.format(id=stamped_by)}\r\n".encode()
    body = f"checked upstream by {stamped_by}"
    if on_top:  # where the mailbox's server writes it, above the sender's fields
        raw = b"Received: from mx by imap.example; Tue, 1 Dec 2026\r\n" + stamp
        raw += compose(sender="pat@example.org", to=to, body=body)
    else:  # written by the sender, below its own From:
        raw = compose(
            sender="pat@example.org",
            to=to,
            body=body,
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
    assert (body in bodies) == (expected == "filed")
    if expected == "filed":
        assert row.auth["sources"] == ["local", "trusted-header"]
        assert row.auth["ar_ignored"] == 0
    else:
        assert row.auth["sources"] == ["local"] and row.auth["dkim"] == "none"
        assert row.auth["ar_ignored"] == 1

"""Forged bounces: anyone who saw a notification's envelope sender can write to its
``bounce+TOKEN@`` address. A delivery report counts only when it speaks of that notification:
it was sent, and the report names its recipient or quotes its Message-ID. Anything else is
quarantined as ``bounce_unmatched``: the patient's address keeps its state, the notification
is untouched, and no staff member is emailed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from gateway.models import InboundMessage, Notification, Patient, QuarantineItem
from gateway.outbound.notify import Kind
from gateway.services import Services
from tests.inbound.helpers import DictResolver
from tests.security.mailtrust import (
    PATIENT_EMAIL,
    asend_raw,
    new_message_email,
    scene,
    smtp_intake,
    with_dns,
)
from tests.support.net import dns_servers


@pytest.fixture
def svc(services: Services) -> Iterator[Services]:
    with dns_servers(DictResolver()) as port:
        yield with_dns(services, port)


def dsn(bounce_address: str, final_recipient: str | None, quoted_message_id: str) -> bytes:
    """An RFC 3464 report of a permanent failure (5.1.1), as the test's hostile sender
    writes it: its Final-Recipient and the quoted Message-ID are whatever it chooses."""
    recipient = f"Final-Recipient: rfc822; {final_recipient}\r\n" if final_recipient else ""
    text = (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {bounce_address}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "Your message could not be delivered.\r\n"
        "\r\n"
        "--b1\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "\r\n"
        f"{recipient}"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n"
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        "From: clinic@clinic.example\r\n"
        f"Message-ID: {quoted_message_id}\r\n"
        "Subject: You have a new message\r\n"
        "\r\n"
        "--b1--\r\n"
    )
    return text.encode()


@pytest.mark.parametrize(
    ("recipient", "quotes_ours", "sent", "outcome"),
    [
        (PATIENT_EMAIL, True, True, "counts"),  # a genuine report
        (PATIENT_EMAIL.upper(), False, True, "counts"),  # names our recipient (any case)
        # Forwarded: the failing mailbox is another, but the report quotes our message.
        ("forwarded-to@example.net", True, True, "counts"),
        ("someone-else@example.net", False, True, "unmatched"),  # not ours at all
        (PATIENT_EMAIL, True, False, "unmatched"),  # never sent: cannot have bounced
        (None, True, True, "ignored"),  # no recipient at all: no bounce report
    ],
)
async def test_only_a_matching_report_counts(svc, recipient, quotes_ours, sent, outcome):
    sc = await scene(svc)
    await sc.world.staff(sc.clinic, role="front_desk")
    notification, addressing = await new_message_email(sc)
    if not sent:
        async with svc.transaction() as s:
            row = await s.get(Notification, notification.id)
            assert row is not None
            row.state, row.sent_at, row.attempts = "queued", None, 0
    quoted = notification.message_id if quotes_ours else "<forged.1@clinic.example>"
    assert quoted is not None
    bounce_address = addressing.mail_from
    async with smtp_intake(svc) as smtp:
        raw = dsn(bounce_address, recipient, quoted)
        assert await asend_raw(smtp.port, "", [bounce_address], raw) == {}
        await smtp.intake.drain()

    async with svc.sessions() as s:
        inbound = await s.scalar(select(InboundMessage))
        reasons = (await s.scalars(select(QuarantineItem.reason))).all()
        n = await s.get(Notification, notification.id)
        patient = await s.get(Patient, sc.patient.id)
        contact = (
            await s.scalars(select(Notification).where(Notification.kind == Kind.CONTACT_PATIENT))
        ).all()
    assert inbound is not None and n is not None and patient is not None
    if outcome == "counts":
        assert inbound.state == "bounce" and reasons == []
        assert n.state == "bounced" and patient.deliverability == "hard"
        assert contact, "a hard bounce asks the clinic's staff to contact the patient"
    else:
        expected = (
            ("quarantined", ["bounce_unmatched"]) if outcome == "unmatched" else ("ignored", [])
        )
        assert (inbound.state, reasons) == expected
        assert n.state == ("sent" if sent else "queued") and n.last_error is None
        assert patient.deliverability == "ok"
        assert contact == []

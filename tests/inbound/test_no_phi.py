"""No PHI leaves the store through the inbound path: log lines, metric labels and the
quarantine listing carry ids, codes and verdicts, never an address, a subject or a body."""

from __future__ import annotations

import logging

from tests.inbound.helpers import asend, compose, publish_key
from tests.support.canaries import CANARY_TEXT


async def test_inbound_logs_and_metrics_hold_no_phi(story, smtp, dns_server, caplog):
    caplog.set_level(logging.DEBUG)
    signer = publish_key(dns_server, "example.org")
    to = await story.reply_address()
    subject = f"Re: {CANARY_TEXT} subject"
    good = signer.sign(compose(sender="pat@example.org", to=to, subject=subject, body=CANARY_TEXT))
    spoofed = compose(sender="pat@example.org", to=to, subject=subject, body=CANARY_TEXT + " 2")
    unknown = f"nobody-{CANARY_TEXT[:6]}@{story.clinic.reply_domain}"
    await asend(smtp.port, "pat@example.org", [to], good)
    await asend(smtp.port, "pat@example.org", [to], spoofed)
    refused = await asend(smtp.port, "pat@example.org", [to, unknown], spoofed)
    assert unknown in refused
    await smtp.intake.drain()

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "inbound" in text  # the intake did log (ids and states)
    for secret in (CANARY_TEXT, "pat@example.org", to, unknown, "CANARY"):
        assert secret not in text, secret
    metrics = story.services.metrics.render().decode()
    for secret in (CANARY_TEXT, "pat@example.org", "reply+"):
        assert secret not in metrics

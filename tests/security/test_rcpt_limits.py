"""``[smtp] max_recipients`` counts RCPT commands, not distinct targets: 1,000 copies of one
valid address get 452 past the cap, and refused recipients (550) count too. A new transaction
starts a new count. (aiosmtpd's per-session command budget, 1,000 RCPTs, is a separate wall:
the 1,000 here fit in it exactly.)"""

from __future__ import annotations

import asyncio
import smtplib

from gateway.services import Services
from tests.security.mailtrust import new_message_email, scene, smtp_intake

CAP = 10


def _session(port: int, plan: list[list[str]]) -> list[list[int]]:
    """One SMTP session: for each transaction in ``plan``, MAIL then every RCPT, then RSET."""
    out: list[list[int]] = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example.org")
        for rcpts in plan:
            assert client.mail("sender@example.net")[0] == 250
            out.append([client.rcpt(r)[0] for r in rcpts])
            assert client.rset()[0] == 250
    return out


async def test_identical_recipients_are_counted(services: Services, with_config):
    svc = with_config(services, smtp={"max_recipients": CAP})
    sc = await scene(svc)
    _row, addressing = await new_message_email(sc)
    valid = addressing.reply_to
    assert valid is not None
    unknown = f"nobody@{sc.clinic.reply_domain}"
    async with smtp_intake(svc) as smtp:
        (first,) = await asyncio.to_thread(_session, smtp.port, [[valid] * 1000])
        second, third = await asyncio.to_thread(
            _session,
            smtp.port,
            [[unknown] * 5 + [valid] * 10, [valid]],  # then a new transaction: counted afresh
        )
    assert first[:CAP] == [250] * CAP
    assert first[CAP:] == [452] * (1000 - CAP)
    # Refused ones count too: 5 refusals + 5 accepted reach the cap.
    assert second == [550] * 5 + [250] * 5 + [452] * 5
    assert third == [250]

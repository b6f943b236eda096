"""Recipients are validated strictly before anything is queued: refused, never rewritten."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from gateway.errors import InvalidAddressError
from gateway.models import Notification
from gateway.outbound import notify
from gateway.outbound.notify import Kind, Notice

BAD = [
    "alice@example.org\r\nBcc: bob@evil.example",
    "alice@example.org\nRCPT TO:<bob@evil.example>",
    "alice@example.org\r",
    "alice\x00@example.org",
    '"alice@example.org"@evil.example',
    "alice@example.org'@evil.example",
    # CVE-2023-27043: parseaddr reads these as alice@example.org, the MTA as evil.example.
    "alice@example.org)<bob@evil.example>",
    "alice@example.org,bob@evil.example",
    "Alice <alice@example.org>",
    "alice@example.org@evil.example",
    "alice@[127.0.0.1]",
    "alice@example.org;bob@evil.example",
    " alice@example.org",
    "",
]


@pytest.mark.parametrize("address", BAD)
async def test_refused_with_a_clear_error_and_nothing_queued(services, world, address):
    clinic = await world.clinic()
    with pytest.raises(InvalidAddressError) as err:
        async with services.transaction() as s:
            await notify.enqueue(
                s,
                services.keyring,
                notice=Notice(kind=Kind.PASSWORD_RESET),
                clinic_id=clinic.id,
                recipient=address,
                now=services.clock.now(),
            )
    message = str(err.value)
    assert message.startswith("email address")
    # The error names the rule, never the address (PHI).
    assert "alice" not in message and "evil" not in message
    async with services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Notification)) == 0


async def test_a_good_address_is_kept_as_given(services, world):
    clinic = await world.clinic()
    async with services.transaction() as s:
        row = await notify.enqueue(
            s,
            services.keyring,
            notice=Notice(kind=Kind.PASSWORD_RESET),
            clinic_id=clinic.id,
            recipient="Alice.Smith+care@Example.ORG",
            now=services.clock.now(),
        )
    assert row.recipient == "Alice.Smith+care@example.org"

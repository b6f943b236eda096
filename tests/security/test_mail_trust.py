"""Forged authentication: an SMTP client writes ``Authentication-Results: <trusted id>;
dkim=pass header.d=<patient's domain>`` into its own message. It is believed only from the hop
that wrote it (a client connecting from ``[inbound] trusted_relays``) and only at the top of
the header; everywhere else it is ignored, counted in the stored verdict, and the unsigned
message is quarantined, never filed in the patient's thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from gateway.careteam import threads
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.models import InboundMessage, QuarantineItem
from gateway.services import Services
from tests.inbound.helpers import DictResolver, compose
from tests.security.mailtrust import (
    PATIENT_EMAIL,
    Scene,
    asend_raw,
    new_message_email,
    scene,
    smtp_intake,
    with_dns,
)
from tests.support.net import dns_servers

TRUSTED_ID = "mx.clinic-trusted.example"
FORGED = f"Authentication-Results: {TRUSTED_ID}; dkim=pass header.d=example.org header.s=s1\r\n"
RELAY_RECEIVED = (
    "Received: from mail.example.org (mail.example.org [192.0.2.7])\r\n"
    f"\tby {TRUSTED_ID} with ESMTPS; Tue, 1 Dec 2026 09:00:00 +0000\r\n"
)


@pytest.fixture
def dns_port() -> Iterator[int]:
    with dns_servers(DictResolver()) as port:
        yield port


async def _send_and_settle(
    services: Services, build: Callable[[bytes], bytes]
) -> tuple[Scene, InboundMessage, list[str], str]:
    """Send the patient's (unsigned) reply, rewritten by ``build``, over real SMTP; answer
    the stored row, the quarantine reasons and the body if it was filed ('' otherwise)."""
    sc = await scene(services)
    _row, addressing = await new_message_email(sc)
    assert addressing.reply_to is not None
    body = "words that must never reach the thread unauthenticated"
    raw = build(compose(sender=PATIENT_EMAIL, to=addressing.reply_to, body=body))
    async with smtp_intake(services) as smtp:
        assert await asend_raw(smtp.port, PATIENT_EMAIL, [addressing.reply_to], raw) == {}
        await smtp.intake.drain()
    async with services.sessions() as s:
        row = await s.scalar(select(InboundMessage))
        bodies = [m.body for m in await threads.messages_of(s, sc.thread.id, include_internal=True)]
        reasons = list((await s.scalars(select(QuarantineItem.reason))).all())
    assert row is not None
    return sc, row, reasons, body if body in bodies else ""


async def test_forged_header_from_an_untrusted_peer_is_ignored(services, dns_port):
    # The header is stamped with the very authserv-id the gateway trusts, at the very top;
    # but 127.0.0.1 is not a trusted relay here (the default: none is).
    svc = with_dns(services, dns_port, trusted_authserv_id=TRUSTED_ID)
    _sc, row, reasons, filed = await _send_and_settle(svc, lambda raw: FORGED.encode() + raw)
    assert filed == ""
    assert row.state == "quarantined" and reasons == ["not_authenticated"]
    assert row.auth["sources"] == ["local"] and row.auth["dkim"] == "none"
    assert row.auth["ar_ignored"] == 1


@pytest.mark.parametrize(
    ("layout", "believed"),
    [
        # The relay's own stamp, above everything the client wrote.
        ("top", True),
        # Above it only the relay's own Received: still the relay's block.
        ("under_received", True),
        # Written by the client below its own From: not the relay's.
        ("among_sender_fields", False),
        # The relay stamped "dkim=none"; the client's copy hides below the relay's Received.
        ("below_the_relay_stamp", False),
        # Someone else's stamp is topmost: nothing below it is the relay's.
        ("below_another_id", False),
    ],
)
async def test_trusted_relay_is_believed_only_for_the_topmost_block(
    services, dns_port, layout, believed
):
    svc = with_dns(
        services, dns_port, trusted_authserv_id=TRUSTED_ID, trusted_relays=("127.0.0.1/32",)
    )

    def build(raw: bytes) -> bytes:
        if layout == "top":
            return (FORGED + RELAY_RECEIVED).encode() + raw
        if layout == "under_received":
            return (RELAY_RECEIVED + FORGED).encode() + raw
        if layout == "among_sender_fields":
            head, sep, rest = raw.partition(b"\r\n")
            return head + sep + FORGED.encode() + rest
        if layout == "below_the_relay_stamp":
            relay = f"Authentication-Results: {TRUSTED_ID}; dkim=none\r\n"
            return (relay + RELAY_RECEIVED + FORGED).encode() + raw
        other = "Authentication-Results: mx.other.example; dkim=none\r\n"
        return (other + FORGED).encode() + raw

    _sc, row, reasons, filed = await _send_and_settle(svc, build)
    if believed:
        assert filed and row.state == "filed" and reasons == []
        assert row.auth["sources"] == ["local", "trusted-header"]
        assert row.auth["ar_ignored"] == 0
    else:
        assert filed == "" and row.state == "quarantined"
        assert reasons == ["not_authenticated"]
        assert row.auth["sources"] == ["local"] and row.auth["ar_ignored"] >= 1


async def test_a_relay_outside_the_trusted_networks_is_not_believed(services, dns_port):
    svc = with_dns(
        services, dns_port, trusted_authserv_id=TRUSTED_ID, trusted_relays=("192.0.2.0/24",)
    )
    _sc, row, reasons, filed = await _send_and_settle(svc, lambda raw: FORGED.encode() + raw)
    assert filed == "" and reasons == ["not_authenticated"] and row.auth["ar_ignored"] == 1


@pytest.mark.parametrize("bad", ["not-a-network", "127.0.0.1/33", "10.0.0.1/8"])
def test_trusted_relays_must_be_networks(tmp_path, bad):
    raw = {
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path}/cb.db"},
        "inbound": {"trusted_relays": [bad]},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, base_dir=str(tmp_path))
    assert "inbound.trusted_relays" in str(err.value)
    ok = parse_config(
        {**raw, "inbound": {"trusted_relays": ["127.0.0.1/32", "::1/128"]}},
        base_dir=str(tmp_path),
    )
    assert ok.inbound.trusted_relays == ("127.0.0.1/32", "::1/128")

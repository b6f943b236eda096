"""The SMTP door: recipients judged at RCPT, limits, smuggling and STARTTLS-injection probes,
250 only after the commit and 451 when it fails, group commit, deduplication."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import pytest
import trustme
from sqlalchemy import func, select, text

from gateway.groupcommit import GroupCommitter
from gateway.inbound.intake import Intake
from gateway.inbound.smtp import SmtpPart
from gateway.models import InboundMessage
from handlers import ROUTING
from tests.inbound.helpers import Story, asend, compose


async def _rows(story: Story) -> list[InboundMessage]:
    async with story.services.sessions() as s:
        return list((await s.scalars(select(InboundMessage))).all())


async def dialogue(port: int, script: bytes, tls: ssl.SSLContext | None = None) -> list[str]:
    """Send ``script`` in one write (pipelined), ending in QUIT; every reply line until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [(await reader.readline()).decode()]
    writer.write(script)
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line:
            break
        lines.append(line.decode())
    writer.close()
    return lines


def _codes(lines: list[str]) -> list[str]:
    return [ln[:3] for ln in lines if len(ln) > 3 and ln[3] == " "]


async def test_recipients_are_judged_at_rcpt(story, smtp, clock):
    domain = story.clinic.reply_domain
    live = await story.reply_address()
    bounce_with_reply_token = live.replace("reply+", "bounce+")
    script = (
        "EHLO probe.example\r\nMAIL FROM:<someone@example.org>\r\n"
        f"RCPT TO:<postmaster@{domain}>\r\n"
        f"RCPT TO:<ABUSE@{domain}>\r\n"
        f"RCPT TO:<{live}>\r\n"
        f"RCPT TO:<nobody@{domain}>\r\n"
        f"RCPT TO:<postmaster@not-a-clinic.example>\r\n"
        f"RCPT TO:<reply+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@{domain}>\r\n"
        f"RCPT TO:<{bounce_with_reply_token}>\r\n"
        "QUIT\r\n"
    ).encode()
    codes = _codes(await dialogue(smtp.port, script))
    assert codes == ["220", "250", "250", "250", "250", "250", "550", "550", "550", "550", "221"]

    clock.advance(hours=story.services.config.tokens.reply_address_hours + 1)
    expired = _codes(
        await dialogue(
            smtp.port,
            f"EHLO p\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{live}>\r\nQUIT\r\n".encode(),
        )
    )
    assert expired == ["220", "250", "250", "550", "221"]


async def test_message_is_stored_encrypted_and_answered_250(story, smtp):
    to = f"postmaster@{story.clinic.reply_domain}"
    raw = compose(sender="ops@example.org", to=to, body="CANARY-PHI-7f3a postmaster note")
    assert await asend(smtp.port, "ops@example.org", [to], raw) == {}
    await smtp.intake.drain()
    rows = await _rows(story)
    assert len(rows) == 1 and rows[0].state == "kept" and rows[0].raw == raw
    async with story.services.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT raw FROM inbound_message"))).scalar_one()
    assert b"CANARY-PHI-7f3a" not in bytes(stored)


async def test_same_message_id_twice_is_stored_once(story, smtp):
    to = f"postmaster@{story.clinic.reply_domain}"
    raw = compose(sender="ops@example.org", to=to, body="once", message_id="<dup-1@example.org>")
    assert await asend(smtp.port, "ops@example.org", [to], raw) == {}
    assert await asend(smtp.port, "ops@example.org", [to], raw) == {}
    await smtp.intake.drain()
    assert len(await _rows(story)) == 1


async def test_oversized_message_gets_552(story, smtp, inbound_services):
    small = dataclasses.replace(
        inbound_services,
        config=dataclasses.replace(
            inbound_services.config,
            smtp=dataclasses.replace(inbound_services.config.smtp, max_message_bytes=2000),
        ),
    )
    part = SmtpPart(small, Intake(small, ROUTING))
    await part.start()
    try:
        to = f"postmaster@{story.clinic.reply_domain}"
        body = "x" * 70 + "\r\n"
        script = (
            f"EHLO p\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\n"
            f"Subject: big\r\n\r\n{body * 60}.\r\nQUIT\r\n"
        ).encode()
        codes = _codes(await dialogue(part.port, script))
        assert codes[-2] == "552"
    finally:
        await part.stop()
    assert await _rows(story) == []


ENDINGS = [b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r", b"\r\n.\r"]


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda e: repr(e)[2:-1])
async def test_smuggling_probes_smuggle_nothing(story, smtp, ending):
    domain = story.clinic.reply_domain
    smuggled = (
        b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<abuse@" + domain.encode() + b">\r\n"
        b"DATA\r\nSubject: SMUGGLED\r\n\r\nSMUGGLED BODY\r\n"
    )
    script = (
        b"EHLO probe.example\r\nMAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<postmaster@" + domain.encode() + b">\r\nDATA\r\n"
        b"Subject: outer\r\n\r\nouter body" + ending + smuggled + b"\r\n.\r\nQUIT\r\n"
    )
    lines = await dialogue(smtp.port, script)
    codes = _codes(lines)
    assert codes.count("354") == 1  # the hidden DATA was never read as a command
    assert codes[-2] == "554"  # the whole thing is refused: bare line endings
    await smtp.intake.drain()
    assert await _rows(story) == []


async def test_pipelined_second_transaction_stays_separate(story, smtp):
    domain = story.clinic.reply_domain
    script = (
        "EHLO p\r\n"
        f"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster@{domain}>\r\nDATA\r\n"
        "Subject: first\r\nMessage-ID: <first@example.org>\r\n\r\nFIRST\r\n.\r\n"
        f"MAIL FROM:<b@example.org>\r\nRCPT TO:<nobody@{domain}>\r\n"
        f"RCPT TO:<abuse@{domain}>\r\nDATA\r\n"
        "Subject: second\r\nMessage-ID: <second@example.org>\r\n\r\nSECOND\r\n.\r\n"
        "QUIT\r\n"
    ).encode()
    codes = _codes(await dialogue(smtp.port, script))
    assert codes == [
        "220",
        "250",
        "250",
        "250",
        "354",
        "250",
        "250",
        "550",
        "250",
        "354",
        "250",
        "221",
    ]
    await smtp.intake.drain()
    rows = sorted(await _rows(story), key=lambda r: r.route)
    assert [r.route for r in rows] == ["abuse", "postmaster"]
    assert b"SECOND" in rows[0].raw and b"FIRST" not in rows[0].raw
    assert b"FIRST" in rows[1].raw and b"SECOND" not in rows[1].raw


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return ca, str(cert_path), str(key_path)


async def test_starttls_command_injection_has_no_effect(story, inbound_services, tls_files):
    ca, cert, key = tls_files
    cfg = inbound_services.config
    svc = dataclasses.replace(
        inbound_services,
        config=dataclasses.replace(
            cfg, smtp=dataclasses.replace(cfg.smtp, tls_cert=cert, tls_key=key)
        ),
    )
    part = SmtpPart(svc, Intake(svc, ROUTING))
    await part.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", part.port)
        assert (await reader.readline()).startswith(b"220")
        writer.write(b"EHLO probe.example\r\n")
        ehlo = [await reader.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(await reader.readline())
        assert any(b"STARTTLS" in ln for ln in ehlo)
        # The injected command rides in the same packet as STARTTLS, before the handshake.
        writer.write(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        assert (await reader.readline()).startswith(b"220")
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        await writer.start_tls(client_ctx, server_hostname="localhost")
        writer.write(b"NOOP\r\nQUIT\r\n")
        after = []
        while line := await reader.readline():
            after.append(line)
        writer.close()
        # Only the answers to NOOP and QUIT: the injected MAIL was discarded, not executed.
        assert [ln[:3] for ln in after] == [b"250", b"221"]
    finally:
        await part.stop()


async def test_connection_cap_per_ip(story, inbound_services):
    cfg = inbound_services.config
    svc = dataclasses.replace(
        inbound_services,
        config=dataclasses.replace(
            cfg, smtp=dataclasses.replace(cfg.smtp, max_connections_per_ip=2)
        ),
    )
    part = SmtpPart(svc, Intake(svc, ROUTING))
    await part.start()
    try:
        held = []
        for _ in range(2):
            r, w = await asyncio.open_connection("127.0.0.1", part.port)
            assert (await r.readline()).startswith(b"220")
            held.append((r, w))
        r3, w3 = await asyncio.open_connection("127.0.0.1", part.port)
        assert (await r3.readline()).startswith(b"421")
        assert await r3.read() == b""  # and the server hung up
        w3.close()
        r1, w1 = held.pop()
        w1.write(b"QUIT\r\n")
        assert (await r1.readline()).startswith(b"221")
        assert await r1.read() == b""
        w1.close()
        r4, w4 = await asyncio.open_connection("127.0.0.1", part.port)
        assert (await r4.readline()).startswith(b"220")
        w4.close()
        for _, w in held:
            w.close()
    finally:
        await part.stop()


async def test_commit_failure_answers_451_and_nothing_is_claimed(story, smtp):
    to = f"postmaster@{story.clinic.reply_domain}"
    async with story.services.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE inbound_message RENAME TO inbound_message_gone"))
    raw = compose(sender="ops@example.org", to=to, body="try later")
    script = (
        f"EHLO p\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode()
        + raw
        + b"\r\n.\r\nQUIT\r\n"
    )
    codes = _codes(await dialogue(smtp.port, script))
    assert codes[-2] == "451"
    async with story.services.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE inbound_message_gone RENAME TO inbound_message"))
    assert await _rows(story) == []


async def test_group_commit_shares_one_commit_between_waiting_sessions():
    release = asyncio.Event()
    written: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        written.append(items)
        if len(written) == 1:
            await release.wait()  # the first commit is "at the disk" while others arrive
        return [i * 10 for i in items]

    committer: GroupCommitter[int, int] = GroupCommitter(write, max_batch=100)
    first = asyncio.create_task(committer.submit(0))
    while not written:
        await asyncio.sleep(0)
    rest = [asyncio.create_task(committer.submit(i)) for i in range(1, 11)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 0
    assert [await t for t in rest] == [i * 10 for i in range(1, 11)]
    assert written == [[0], list(range(1, 11))]
    assert committer.batches == 2


async def test_concurrent_sessions_all_stored(story, smtp):
    to = f"postmaster@{story.clinic.reply_domain}"
    raws = [compose(sender=f"s{i}@example.org", to=to, body=f"msg {i}") for i in range(30)]
    results = await asyncio.gather(
        *(asend(smtp.port, f"s{i}@example.org", [to], raw) for i, raw in enumerate(raws))
    )
    assert all(r == {} for r in results)
    await smtp.intake.drain()
    async with story.services.sessions() as s:
        n = await s.scalar(select(func.count()).select_from(InboundMessage))
    assert n == 30
    assert smtp.intake.commits <= 30


async def test_oversized_header_block_is_refused_and_counted(story, inbound_services):
    cfg = inbound_services.config
    svc = dataclasses.replace(
        inbound_services,
        config=dataclasses.replace(
            cfg, inbound=dataclasses.replace(cfg.inbound, max_header_bytes=1024)
        ),
    )
    part = SmtpPart(svc, Intake(svc, ROUTING))
    await part.start()
    try:
        to = f"postmaster@{story.clinic.reply_domain}"
        headers = "".join(f"X-Filler-{i}: {'y' * 60}\r\n" for i in range(40))
        script = (
            f"EHLO p\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\n"
            f"{headers}Subject: many headers\r\n\r\nbody\r\n.\r\nQUIT\r\n"
        ).encode()
        codes = _codes(await dialogue(part.port, script))
        assert codes[-2] == "554"
    finally:
        await part.stop()
    assert await _rows(story) == []
    refused = svc.metrics.intake.labels(outcome="refused")._value.get()
    assert refused == 1


async def test_intake_metrics_count_outcomes(story, smtp):
    to = f"postmaster@{story.clinic.reply_domain}"
    raw = compose(sender="ops@example.org", to=to, body="count me")
    await asend(smtp.port, "ops@example.org", [to], raw)
    await smtp.intake.drain()
    metrics = story.services.metrics.render().decode()
    assert 'carebridge_intake_total{outcome="kept"} 1.0' in metrics
    assert "ops@example.org" not in metrics

"""Fuzzing the edges where outside bytes meet carebridge.

- Intake (the one intake function): arbitrary and hostile messages never crash or hang it,
  parsing time stays bounded, and each input ends in exactly one state: refused (the SMTP
  session answers 5xx), or stored and then filed, quarantined (with exactly one quarantine
  row) or another terminal state; never left "received".
- Header building (the outbound renderer's headers): hostile clinic names, subjects and
  addresses produce exactly the expected headers, CRLF only, no line over 998 octets.
- Addresses on the wire: every hostile address that validation lets through puts exactly one
  RCPT (and nothing else) on the wire at a loopback sink.
- The quote stripper: never crashes, never invents text.

Example counts come from ``CAREBRIDGE_FUZZ_EXAMPLES`` (short form default 100; the full run
uses 10,000: ``CAREBRIDGE_FUZZ_EXAMPLES=10000 pytest tests/reliability/test_fuzz.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import compat32

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway import tokens
from gateway.addresses import validate_address
from gateway.errors import InvalidAddressError
from gateway.inbound.intake import Intake, Refused
from gateway.inbound.parsing import new_text, text_body
from gateway.inbound.routing import Target, resolve_recipient
from gateway.models import InboundMessage, QuarantineItem
from gateway.outbound import headers
from gateway.outbound.render import EmailContext, Renderer
from gateway.outbound.transport import DeliveryError, OutboundEnvelope, SmtpTransport
from gateway.services import Services
from handlers import ROUTING
from tests.reliability.sink import Sink
from tests.reliability.stories import ReplyWorld, reply_world
from tests.reliability.strategies import hostile_address, hostile_mail, hostile_text

# Timing-bound: scripts/test runs these alone, after the parallel part.
pytestmark = pytest.mark.serial

EXAMPLES = int(os.environ.get("CAREBRIDGE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
TERMINAL = {"filed", "quarantined", "ignored", "kept", "bounce", "confirmed"}
# Parsing has its own deadline ([inbound] parse_timeout_seconds); allow it plus a margin.
PROCESS_BOUND_SECONDS = 10.0


@dataclass
class Targets:
    services: Services
    world: ReplyWorld

    async def fresh(self, which: int) -> Target:
        """A new live reply token per example (or postmaster@), so no example is a duplicate
        of an earlier one by Message-ID: each must reach its own end state."""
        rw, svc = self.world, self.services
        now = svc.clock.now()
        async with svc.transaction() as s:
            if which == 0:
                tok = await tokens.issue(
                    s,
                    svc.config.tokens,
                    purpose="reply_address",
                    subject_kind="patient",
                    subject_id=rw.patient.id,
                    now=now,
                    data={"thread_id": rw.thread.id},
                )
                address = f"reply+{tok.value}@{rw.clinic.reply_domain}"
            else:
                address = f"postmaster@{rw.clinic.reply_domain}"
            target = await resolve_recipient(s, ROUTING, address, now)
        assert target is not None
        return target


@pytest.fixture
async def targets(rservices: Services, world) -> Targets:  # type: ignore[no-untyped-def]
    return Targets(rservices, await reply_world(rservices, world))


async def _end_state(services: Services, raw: bytes, target: Target) -> list[str]:
    """Run one message through the intake; the end state of each stored row, or refused."""
    intake = Intake(services, ROUTING)
    try:
        outcome = await asyncio.wait_for(
            intake.receive(raw, source="smtp", targets=[target], process=False),
            PROCESS_BOUND_SECONDS,
        )
        if isinstance(outcome, Refused):
            assert outcome.reason  # the SMTP part turns this into a 5xx with the reason code
            return ["refused"]
        if not outcome.inbound_ids:
            # Already stored (same Message-ID on the same route): SMTP answers 250 again and
            # the first copy's end state stands.
            assert outcome.duplicates == 1
            return ["duplicate"]
        started = time.monotonic()
        errors = []
        for inbound_id in outcome.inbound_ids:
            try:  # judged by the row's state below; the error explains a stuck row
                await asyncio.wait_for(intake.process(inbound_id), PROCESS_BOUND_SECONDS)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
        assert time.monotonic() - started < PROCESS_BOUND_SECONDS, "parsing is not bounded"
        states = []
        async with services.sessions() as s:
            for inbound_id in outcome.inbound_ids:
                row = await s.get(InboundMessage, inbound_id)
                assert row is not None
                held = await s.scalar(
                    select(func.count())
                    .select_from(QuarantineItem)
                    .where(QuarantineItem.inbound_id == inbound_id)
                )
                assert held == (1 if row.state == "quarantined" else 0), (row.state, held)
                states.append(row.state if row.state != "received" else f"received {errors}")
        return states
    finally:
        await intake.close()


# A header block dkimpy's constructor refuses: once left a 250'd message unprocessed.
DKIM_BROKEN_HEADERS = (
    b"DKIM-Signature: v=1; a=rsa-sha256\r\n.\r\nFrom: a@example.org\r\n\r\nbody\r\n"
)


@FUZZ
@given(raw=hostile_mail, which=st.integers(0, 1))
@example(raw=DKIM_BROKEN_HEADERS, which=0)
async def test_intake_ends_every_input_in_exactly_one_state(
    rservices: Services, targets: Targets, raw: bytes, which: int
) -> None:
    states = await _end_state(rservices, raw, await targets.fresh(which))
    assert len(states) == 1
    assert states[0] in TERMINAL | {"refused", "duplicate"}, f"left in state {states[0]}"


async def test_a_broken_header_block_with_a_dkim_signature_still_ends_in_a_state(
    rservices: Services, targets: Targets
) -> None:
    """Found by the fuzzer: dkimpy's constructor raises on a header block holding a line that
    is not a header; the message was stored (250) but never processed, at every restart."""
    states = await _end_state(rservices, DKIM_BROKEN_HEADERS, await targets.fresh(0))
    # With no envelope sender it is treated as automated mail (ignored); never left received.
    assert len(states) == 1 and states[0] in TERMINAL | {"refused"}, states
    assert states[0] != "filed"


EXPECTED_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "Auto-Submitted",
    "X-Auto-Response-Suppress",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
]


_RENDERER = Renderer()


@FUZZ
@given(
    # As long as the columns allow: clinic and pool names String(200), phone String(40).
    name=hostile_text.map(lambda v: v[:200]),
    phone=hostile_text.map(lambda v: v[:40]),
    pool=hostile_text.map(lambda v: v[:200]),
    to=hostile_address,
    kind=st.sampled_from(["new_message", "request_received", "password_reset", "staff_digest"]),
    lang=st.sampled_from(["en", "es", "xx"]),
)
def test_hostile_names_and_subjects_add_no_header(
    name: str, phone: str, pool: str, to: str, kind: str, lang: str
) -> None:
    """The renderer and header builder together, as the delivery part calls them."""
    try:
        recipient = validate_address(to)  # the queue refuses anything else before rendering
    except InvalidAddressError:
        recipient = "pat@example.org"
    ctx = EmailContext(
        audience="staff" if kind == "staff_digest" else "patient",
        kind=kind,
        lang=lang,
        clinic_name=name,
        clinic_phone=phone,
        pool_name=pool,
        link="https://portal.example/t/tok",
        unsubscribe_link="https://portal.example/u/tok",
        reply_allowed=True,
    )
    try:
        data = headers.build(
            _RENDERER.render(ctx),
            from_name=name,
            from_address="notifications@clinic.example",
            to=recipient,
            msg_id="<n1.abc@clinic.example>",
            date=datetime(2026, 3, 2, tzinfo=UTC),
            reply_to="reply+tok@reply.clinic.example",
            unsubscribe_link="https://portal.example/u/tok",
        )
    except (ValueError, TypeError) as exc:
        # Refusing to build is safe (the row goes dead, nothing is sent); say it clearly.
        assert str(exc)
        return
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in data.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line, line[:80]
        assert len(line) <= 998
    # Read the headers as a receiving MTA does, without decoding anything.
    msg = message_from_bytes(data, policy=compat32)
    assert list(msg.keys()) == EXPECTED_HEADERS, (list(msg.keys()), head[:300])

    def raw(name: str) -> str:
        return re.sub(r"\r\n[ \t]", " ", str(msg[name]))

    assert raw("To") in (recipient, f"<{recipient}>") or recipient in raw("To"), raw("To")
    assert "," not in raw("To").replace(recipient, "")  # one recipient, nothing smuggled
    assert raw("From") == "notifications@clinic.example" or raw("From").endswith(
        " <notifications@clinic.example>"
    ), raw("From")
    assert raw("Reply-To") == "reply+tok@reply.clinic.example"


@pytest.fixture
async def wire(make_config):  # type: ignore[no-untyped-def]
    """The real SMTP transport pointed at a recording sink (no store needed)."""
    sink = await Sink().start()
    transport = SmtpTransport(make_config(delivery={"relay": sink.address}))
    yield sink, transport
    await transport.close()
    await sink.stop()


@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.filter_too_much])
@given(address=hostile_address)
@example(address="pat@bücher.example")
@example(address="pät@example.org")
async def test_accepted_hostile_addresses_put_one_rcpt_on_the_wire(wire, address: str) -> None:
    sink, transport = wire
    try:
        recipient = validate_address(address)
    except InvalidAddressError:
        assume(False)
        return
    before = len(sink.messages)
    try:
        await transport.send(
            OutboundEnvelope(
                mail_from="bounce+tok@reply.clinic.example",
                recipient=recipient,
                data=b"Subject: x\r\n\r\nbody\r\n",
            )
        )
    except DeliveryError as exc:  # the sink may refuse an SMTPUTF8 address: not an injection
        assert "refused" in str(exc) or exc.permanent is not None
    assert sink.violations == []
    got = sink.messages[before:]
    assert len(got) <= 1
    if got:
        assert got[0].rcpt_to == [recipient]
        assert got[0].mail_from == "bounce+tok@reply.clinic.example"


@FUZZ
@given(body=hostile_text, quoted=hostile_text)
def test_quote_stripper_never_crashes_or_invents_text(body: str, quoted: str) -> None:
    text = f"{body}\r\n\r\nOn Mon, 2 Mar 2026, Clinic wrote:\r\n> {quoted}\r\n"
    msg = EmailMessage()
    msg["From"] = "pat@example.org"
    try:
        msg.set_content(text)
    except (ValueError, TypeError):
        assume(False)
        return
    started = time.monotonic()
    result = new_text(text_body(msg))
    assert time.monotonic() - started < 2.0
    assert isinstance(result, str)
    source = msg.get_content()
    for line in result.splitlines():
        assert line.strip() in source, (line, source)


async def test_an_internationalised_address_is_sent_or_refused_cleanly(wire) -> None:
    """Found by the fuzzer: validate_address accepts non-ASCII addresses, and the SMTP
    transport then fails with UnicodeEncodeError (not a DeliveryError), leaving the
    connection open and the row retried until it expires instead of bounced once."""
    sink, transport = wire
    for address in ("pat@bücher.example", "pät@example.org"):
        recipient = validate_address(address)
        try:
            await transport.send(
                OutboundEnvelope(
                    mail_from="bounce+tok@reply.clinic.example",
                    recipient=recipient,
                    data=b"Subject: x\r\n\r\nbody\r\n",
                )
            )
        except DeliveryError as exc:
            assert exc.permanent, exc
        else:
            assert sink.messages[-1].rcpt_to[0] in (recipient, recipient.encode("idna").decode())

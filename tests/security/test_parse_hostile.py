"""A crafted email cannot hold the event loop (issue 14).

A ~62 KB folded ``From:`` of ``""a`` repeated, sent to postmaster@ (no token needed), made
CPython's header parser run for minutes on the event loop. Here the message goes over real
SMTP to the intake while a thread polls ``/healthz`` over real HTTP (uvicorn in the same loop,
as ``carebridge serve`` runs them): refused at DATA by the header caps, and, with the caps
raised, parsed in a worker process that its deadline kills, while the web keeps answering.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import select

from gateway.inbound.intake import Intake
from gateway.inbound.parsing import MalformedMessage, check_header_values, header_block
from gateway.inbound.smtp import SmtpPart
from gateway.models import InboundMessage, QuarantineItem
from gateway.serve import WebPart
from gateway.services import Services
from handlers import ROUTING
from tests.inbound.helpers import Story, compose
from tests.support.hostile import hostile_from

HEALTHZ_BOUND = 1.0  # generous: the strict 200 ms figure is bench/flood.py's


class HealthPoller:
    """Polls /healthz from its own thread, so a stalled server loop shows as slow answers."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - t)
                self.failures += not ok
                self._stop.wait(0.02)

    async def __aenter__(self) -> HealthPoller:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        # Joined from a thread: the request in flight needs this loop to be answered.
        await asyncio.to_thread(self._thread.join, 60)


def send(port: int, to: str, raw: bytes) -> tuple[int, str]:
    """The server's answer to DATA (code, text), over a plain smtplib session."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example.org")
        client.mail("ops@example.org")
        code, _ = client.rcpt(to)
        assert code == 250
        code, text = client.data(raw)
        return code, text.decode()


@pytest.fixture
async def serve(
    inbound_services: Services,
) -> AsyncIterator[Callable[[Services], AsyncIterator[tuple[int, int, Intake]]]]:
    """SMTP intake and the web app in this loop, as ``carebridge serve`` runs them."""
    started: list[object] = []

    async def start(svc: Services) -> tuple[int, int, Intake]:
        intake = Intake(svc, ROUTING)
        smtp, web = SmtpPart(svc, intake), WebPart(svc)
        await smtp.start()
        await web.start()
        started.extend([smtp, web])
        return smtp.port, web.port, intake

    yield start  # type: ignore[misc]
    for part in reversed(started):
        await part.stop()  # type: ignore[attr-defined]


async def _final_state(svc: Services, timeout: float = 60) -> InboundMessage:
    deadline = time.monotonic() + timeout
    while True:
        async with svc.sessions() as s:
            rows = (await s.scalars(select(InboundMessage))).all()
        done = [r for r in rows if r.state != "received"]
        if done or time.monotonic() > deadline:
            assert done, "the message was never processed"
            return done[-1]
        await asyncio.sleep(0.1)


async def test_folded_from_to_postmaster_is_refused_at_data_while_healthz_stays_fast(
    inbound_services: Services,
    story: Story,
    serve: Callable[[Services], object],
) -> None:
    smtp_port, web_port, _ = await serve(inbound_services)  # type: ignore[misc]
    to = f"postmaster@{story.clinic.reply_domain}"
    async with HealthPoller(web_port) as poll:
        code, text = await asyncio.to_thread(send, smtp_port, to, hostile_from(62_000, to))
        await asyncio.sleep(0.5)
    assert code == 554 and "address header" in text
    assert poll.latencies and poll.failures == 0
    assert max(poll.latencies) < HEALTHZ_BOUND
    async with inbound_services.sessions() as s:
        assert (await s.scalars(select(InboundMessage))).all() == []  # never stored


async def test_with_caps_raised_the_parse_is_killed_at_its_deadline_and_the_loop_never_waits(
    inbound_services: Services,
    story: Story,
    serve: Callable[[Services], object],
    with_config: Callable[..., Services],
) -> None:
    # An operator who raised the caps to the header block's size: the parse itself must
    # still not hold anyone up (62 KB takes CPython minutes to parse).
    svc = with_config(
        inbound_services,
        inbound={
            "max_address_header_bytes": 64 * 1024,
            "max_header_value_bytes": 64 * 1024,
            "parse_timeout_seconds": 2.0,
        },
    )
    pool = svc.executors.parse
    smtp_port, web_port, _ = await serve(svc)  # type: ignore[misc]
    to = f"postmaster@{story.clinic.reply_domain}"
    killed_before = pool.killed
    async with HealthPoller(web_port) as poll:
        code, _ = await asyncio.to_thread(send, smtp_port, to, hostile_from(62_000, to))
        assert code == 250
        row = await _final_state(svc)
    assert poll.failures == 0 and len(poll.latencies) > 10
    assert max(poll.latencies) < HEALTHZ_BOUND, max(poll.latencies)
    assert row.state == "quarantined" and row.detail == "parse_timeout"
    assert pool.killed == killed_before + 1
    async with svc.sessions() as s:
        item = (await s.scalars(select(QuarantineItem))).one()
    assert item.reason == "parse_timeout"

    # The next message is parsed by a fresh worker and kept as usual.
    raw = compose(sender="ops@example.org", to=to, body="a plain note")
    code, _ = await asyncio.to_thread(send, smtp_port, to, raw)
    assert code == 250
    deadline = time.monotonic() + 60
    while True:
        async with svc.sessions() as s:
            states = sorted(r.state for r in (await s.scalars(select(InboundMessage))).all())
        if states == ["kept", "quarantined"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert states == ["kept", "quarantined"]


@pytest.mark.parametrize(
    ("header", "reply"),
    [
        ("Reply-To: " + ",\r\n ".join(["someone@example.org"] * 250), "address header"),
        ("Sender: " + ",\r\n ".join(["x@example.org"] * 400), "address header"),
        ("Subject: " + "\r\n ".join(["word"] * 4000), "header field is too long"),
        ("X-Anything: " + "\r\n ".join(["b" * 70] * 300), "header field is too long"),
    ],
    ids=["reply-to", "sender", "folded-subject", "other"],
)
async def test_header_values_over_their_caps_are_refused_at_data_with_the_reason(
    inbound_services: Services,
    story: Story,
    serve: Callable[[Services], object],
    header: str,
    reply: str,
) -> None:
    smtp_port, _, _ = await serve(inbound_services)  # type: ignore[misc]
    to = f"postmaster@{story.clinic.reply_domain}"
    raw = compose(sender="ops@example.org", to=to, body="hello")
    raw = header.encode() + b"\r\n" + raw
    code, text = await asyncio.to_thread(send, smtp_port, to, raw)
    assert code == 554 and reply in text


def test_the_header_scan_counts_folded_lines_and_leaves_normal_headers_alone() -> None:
    normal = compose(
        sender='"Pat Example" <pat@example.org>',
        to="reply+abc@reply.example",
        body="hi",
        headers={"References": " ".join(f"<m{i}@example.org>" for i in range(100))},
    )
    check_header_values(header_block(normal, 65536), max_address=4096, max_value=16384)
    folded = b"From: " + b"\r\n ".join([b'""a""a""a'] * 600) + b"\r\nTo: x@example.org\r\n"
    with pytest.raises(MalformedMessage) as exc:
        check_header_values(folded, max_address=4096, max_value=16384)
    assert exc.value.reason == "address_header_too_large"

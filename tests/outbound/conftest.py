"""Real peers on loopback for outbound tests: an SMTP sink behind a wiretap that records
every byte of every session as it crossed the wire, a DNS server (dnslib) for DKIM keys
and MX records, and a test CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session
from dnslib import MX, QTYPE, RR, TXT, A
from dnslib.server import BaseResolver

from gateway.services import Services
from tests.support.net import dns_servers


@dataclass
class Sink:
    """What the sink saw: raw cleartext bytes of every session, and accepted messages."""

    port: int = 0
    raw: bytearray = field(default_factory=bytearray)
    raw_replies: bytearray = field(default_factory=bytearray)
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    # Reply to RCPT TO (None: accept); e.g. "451 4.3.0 Try again later".
    rcpt_reply: str | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)
    rcpt_attempts: int = 0
    # Awaited when a message's data has arrived, before the sink answers it.
    on_data: Callable[[], Awaitable[None]] | None = None


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.sink.rcpt_attempts += 1
        if self.sink.rcpt_reply:
            return self.sink.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        assert isinstance(data, bytes)
        if self.sink.on_data is not None:
            await self.sink.on_data()
        self.sink.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), data))
        self.sink.received.set()
        return "250 2.0.0 Accepted"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: bytearray) -> None:
    try:
        while data := await reader.read(65536):
            log.extend(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _wiretap(sink: Sink, upstream_port: int) -> Callable[..., Any]:
    """A TCP proxy in front of the sink: ``sink.raw`` gets every byte the client sent, as it
    crossed the wire (ciphertext after STARTTLS), ``sink.raw_replies`` the server's."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(
            _pump(reader, up_writer, sink.raw), _pump(up_reader, writer, sink.raw_replies)
        )

    return handle


@pytest.fixture
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def start_sink() -> Iterator[Callable[..., Any]]:
    servers: list[asyncio.Server] = []

    async def start(*, tls_ca: trustme.CA | None = None, rcpt_reply: str | None = None) -> Sink:
        sink = Sink(rcpt_reply=rcpt_reply)
        context = None
        if tls_ca is not None:
            cert = tls_ca.issue_cert("127.0.0.1", "localhost")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(context)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(_Handler(sink), hostname="sink.test", tls_context=context),
            "127.0.0.1",
            0,
        )
        tap = await asyncio.start_server(
            _wiretap(sink, server.sockets[0].getsockname()[1]), "127.0.0.1", 0
        )
        servers.extend([tap, server])
        sink.port = tap.sockets[0].getsockname()[1]
        return sink

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def sink(start_sink: Callable[..., Any]) -> Sink:
    result: Sink = await start_sink()
    return result


class _Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.txt: dict[str, str] = {}
        self.mx: dict[str, list[tuple[int, str]]] = {}
        self.a: dict[str, list[str]] = {}
        self.nxdomain: set[str] = set()

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        if qtype == "TXT" and qname in self.txt:
            value = self.txt[qname].encode()
            # TXT strings are at most 255 bytes: an RSA-2048 key needs two.
            chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        elif qtype == "MX" and qname in self.mx:
            for pref, host in self.mx[qname]:
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(host, pref), ttl=60))
        elif qtype == "A" and qname in self.a:
            for ip in self.a[qname]:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
        elif qname in self.nxdomain:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@dataclass
class Dns:
    zone: _Zone
    port: int

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dns_server() -> Iterator[Dns]:
    zone = _Zone()
    with dns_servers(zone) as port:
        yield Dns(zone, port)


@pytest.fixture
def relay_to(with_config: Callable[..., Services]) -> Callable[..., Services]:
    """Services whose delivery goes through an SMTP relay on loopback (no maildir)."""

    def make(services: Services, port: int, **delivery: Any) -> Services:
        return with_config(
            services, delivery={"relay": f"127.0.0.1:{port}", "maildir": "", **delivery}
        )

    return make

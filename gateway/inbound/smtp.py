"""SMTP intake: aiosmtpd running in the serve loop (``loop.create_server``, no extra thread).

Recipients are judged at RCPT time through the routing table (live token on a clinic's reply
domain, or postmaster@/abuse@); everything else gets 550 5.1.1 there, so carebridge never has
to bounce anything later (no backscatter). DATA hands the bytes to the one intake path and
answers 250 only after the group commit holding them returned; a failed commit answers 451.

Limits: ``[smtp] max_message_bytes`` (552), RFC line and command lengths (aiosmtpd), a budget
per command per session, ``max_recipients`` RCPT commands per transaction (452 for every one
past the cap, duplicates and refused ones counted too: each costs a lookup),
``max_connections_per_ip`` (421), an idle
timeout, and bare CR or LF in DATA refused (554), so the SMTP smuggling tricks that rely on
lone line endings have nothing to work with. aiosmtpd >= 1.4.6 only ends DATA on CRLF.CRLF.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import SmtpReply
from gateway.inbound.auth import ReceivedEnvelope
from gateway.inbound.intake import Intake, Refused
from gateway.inbound.routing import RecipientCache, Target, resolve_recipient
from gateway.services import Services

log = logging.getLogger("carebridge.smtp")
# aiosmtpd logs every MAIL FROM and RCPT TO address at INFO and command text at WARNING:
# addresses are PHI, so its logger is silenced and carebridge.smtp logs ids instead.
logging.getLogger("mail.log").setLevel(logging.CRITICAL + 1)

BARE_LINE_ENDING = "554 5.6.0 Bare CR or LF in message; use CRLF line endings"
# Refusals of the message itself at DATA, by the intake's reason code.
REFUSALS = {
    "header_too_large": "554 5.6.0 Message header block too large",
    "address_header_too_large": "554 5.6.0 An address header (From, To, ...) is too long",
    "header_value_too_large": "554 5.6.0 A header field is too long",
}
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# Per-session budgets: generous for real senders, a wall for command floods.
CALL_LIMITS = {"*": 1000, "EHLO": 10, "HELO": 10, "STARTTLS": 2, "NOOP": 50, "VRFY": 5, "HELP": 5}


class IntakeHandler:
    """aiosmtpd hooks: judge recipients at RCPT, store at DATA."""

    def __init__(self, services: Services, intake: Intake) -> None:
        self.services = services
        self.intake = intake
        self.recipients = RecipientCache()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        targets: list[Target] = getattr(envelope, "carebridge_targets", [])
        # Every RCPT counts, not every distinct target: 1,000 copies of one address are
        # 1,000 commands to answer. aiosmtpd makes a new envelope per transaction.
        asked: int = getattr(envelope, "carebridge_rcpt_count", 0) + 1
        envelope.carebridge_rcpt_count = asked  # type: ignore[attr-defined]
        if asked > self.services.config.smtp.max_recipients:
            return SmtpReply.TOO_MANY_RECIPIENTS
        now = self.services.clock.now()
        known, target = self.recipients.get(address, now)
        if not known:
            try:
                async with self.intake.read_sessions() as s:
                    target = await resolve_recipient(s, self.intake.routing, address, now)
            except (SQLAlchemyError, OSError) as exc:
                log.error("RCPT check failed (%s); answering 451", type(exc).__name__)
                return SmtpReply.TEMPFAIL
            self.recipients.put(address, target)
        if target is None:
            return SmtpReply.NO_SUCH_USER
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if target not in targets:
            targets.append(target)
        envelope.carebridge_targets = targets  # type: ignore[attr-defined]
        return SmtpReply.ACCEPTED

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content
        if not isinstance(raw, bytes | bytearray):
            return SmtpReply.MALFORMED
        raw = bytes(raw)
        if _BARE.search(raw):
            self.services.metrics.intake.labels(outcome="refused").inc()
            return BARE_LINE_ENDING
        targets: list[Target] = getattr(envelope, "carebridge_targets", [])
        mail_from = envelope.mail_from or ""
        peer = session.peer
        env = ReceivedEnvelope(
            mail_from="" if mail_from == "<>" else mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            peer_ip=str(peer[0]) if isinstance(peer, tuple) else "",
            helo=str(session.host_name or ""),
        )
        try:
            outcome = await self.intake.receive(raw, source="smtp", targets=targets, envelope=env)
        except Exception as exc:  # the commit failed: the sender must try again later
            log.error("intake commit failed (%s); answering 451", type(exc).__name__)
            self.services.metrics.intake.labels(outcome="tempfail").inc()
            return SmtpReply.TEMPFAIL
        if isinstance(outcome, Refused):
            log.info("message refused at DATA: %s", outcome.reason)
            return REFUSALS.get(outcome.reason, SmtpReply.MALFORMED)
        return SmtpReply.OK


class _LimitedSMTP(SMTP):
    """aiosmtpd's protocol with a cap on concurrent connections per client address."""

    def __init__(self, handler: IntakeHandler, counts: Counter[str], cap: int, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self._counts = counts
        self._cap = cap
        self._ip: str | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._ip is None and self._original_transport is None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) else "?"
            if self._counts[ip] >= self._cap:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"{SmtpReply.TOO_MANY_CONNECTIONS}\r\n".encode())
                transport.close()
                return
            self._ip = ip
            self._counts[ip] += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._ip is not None:
            self._counts[self._ip] -= 1
            if self._counts[self._ip] <= 0:
                del self._counts[self._ip]
            self._ip = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)


def tls_context(services: Services) -> ssl.SSLContext | None:
    cfg = services.config.smtp
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(
        str(services.config.path(cfg.tls_cert)), str(services.config.path(cfg.tls_key))
    )
    return ctx


class SmtpPart:
    """The SMTP listener as a serve-loop part. Start-up first processes leftovers."""

    name = "smtp"

    def __init__(self, services: Services, intake: Intake | None = None) -> None:
        self.services = services
        self.intake = intake or Intake(services)
        self.handler = IntakeHandler(services, self.intake)
        self._counts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None

    def _protocol(self) -> _LimitedSMTP:
        cfg = self.services.config.smtp
        tls = self._tls
        return _LimitedSMTP(
            self.handler,
            self._counts,
            cfg.max_connections_per_ip,
            data_size_limit=cfg.max_message_bytes,
            hostname=cfg.hostname,
            ident="carebridge ESMTP",
            tls_context=tls,
            require_starttls=cfg.require_starttls and tls is not None,
            timeout=cfg.timeout,
            command_call_limit=CALL_LIMITS,
            enable_SMTPUTF8=True,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._tls = tls_context(self.services)
        host, _, port = self.services.config.smtp.listen.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=host, port=int(port))
        leftovers = await self.intake.recover()
        if leftovers:
            log.info("processing %d messages stored before the last stop", leftovers)
        log.info("smtp listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.intake.close()

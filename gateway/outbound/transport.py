"""Getting bytes to the next hop: an SMTP relay, the recipient's MX, or a directory of .eml.

Failures are one exception, :class:`DeliveryError`, that says whether to retry (4xx, network
trouble, no STARTTLS where TLS is required) or bounce (5xx). Its text holds reply codes only:
servers often echo the recipient's address in their replies, and that is PHI.

TLS: STARTTLS is used whenever the peer offers it. When the clinic requires TLS, a peer that
does not offer it gets no MAIL command at all (the message is deferred), and its certificate
must verify (system CAs plus ``[delivery] tls_ca_file``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from gateway.config import Config
from gateway.dns import async_resolver
from gateway.errors import CarebridgeError

log = logging.getLogger("carebridge.delivery")


class DeliveryError(CarebridgeError):
    """A delivery attempt failed; ``permanent`` decides between bounce and retry."""

    def __init__(self, reason: str, *, permanent: bool, code: int | None = None) -> None:
        self.reason = reason
        self.permanent = permanent
        self.code = code
        super().__init__(f"{code} {reason}" if code else reason)


@dataclass(frozen=True)
class OutboundEnvelope:
    """One message for one recipient, as the next hop is to receive it."""

    mail_from: str
    recipient: str
    data: bytes
    tls_required: bool = False
    ident: str = ""  # the notification id, for file names and log lines
    # Awaited by an SMTP transport just before DATA: from there on the peer may take the
    # message, so the caller counts it as unconfirmed until the answer is recorded.
    before_data: Callable[[], Awaitable[None]] | None = field(
        default=None, compare=False, repr=False
    )


class Transport(Protocol):
    async def send(self, envelope: OutboundEnvelope) -> None: ...

    async def close(self) -> None: ...


# -- development: write .eml files ---------------------------------------------------------
class MaildirTransport:
    """Writes each message to ``DIR/<ident>.eml`` (atomically: temp file, then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, envelope: OutboundEnvelope) -> None:
        await asyncio.to_thread(self._write, envelope)

    def _write(self, envelope: OutboundEnvelope) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = envelope.ident or os.urandom(8).hex()
        final = self.directory / f"{name}.eml"
        tmp = self.directory / f".{name}.tmp"
        # Return-Path is what a final delivery would add: shows the VERP sender in the file.
        tmp.write_bytes(b"Return-Path: <" + envelope.mail_from.encode() + b">\r\n" + envelope.data)
        tmp.replace(final)

    async def close(self) -> None:
        return None


# -- SMTP ----------------------------------------------------------------------------------
def _status(exc: aiosmtplib.SMTPResponseException) -> str:
    """The enhanced status code of a reply, if any ("5.1.1"); never the reply's free text."""
    first = (exc.message or "").split(" ", 1)[0]
    parts = first.split(".")
    ok = len(parts) == 3 and all(p.isdigit() for p in parts)
    return first if ok else ""


def classify(exc: BaseException, stage: str) -> DeliveryError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
        reason = f"{stage} refused {_status(exc)}".strip()
        return DeliveryError(reason, permanent=500 <= code < 600, code=code)
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return DeliveryError(f"{stage}: TLS failed ({type(exc).__name__})", permanent=False)
    return DeliveryError(f"{stage}: {type(exc).__name__}", permanent=False)


@dataclass
class _Conn:
    client: aiosmtplib.SMTP
    tls: bool


class SmtpTransport:
    """aiosmtplib to ``[delivery] relay`` or to the recipient domain's MX hosts.

    Connections are kept open per (host, port, verified) and reused, one message at a time
    each; a connection that saw any error is closed rather than reused.
    """

    def __init__(self, config: Config, *, max_idle_per_host: int = 8) -> None:
        self.config = config
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._verified = ssl.create_default_context()
        if config.delivery.tls_ca_file:
            self._verified.load_verify_locations(str(config.path(config.delivery.tls_ca_file)))
        # Opportunistic TLS (RFC 7435): encrypt when offered, accept any certificate.
        self._opportunistic = ssl.create_default_context()
        self._opportunistic.check_hostname = False
        self._opportunistic.verify_mode = ssl.CERT_NONE
        self._resolver = async_resolver(config.dns)

    async def targets(self, domain: str) -> list[tuple[str, int, str]]:
        """(address to connect to, port, name the certificate must carry), best first."""
        relay = self.config.delivery.relay
        if relay:
            host, _, relay_port = relay.rpartition(":")
            return [(host, int(relay_port), host)]
        port = self.config.delivery.mx_port
        out: list[tuple[str, int, str]] = []
        for mx in await mx_hosts(self._resolver, domain):
            # Addresses come from the configured resolver too, not the system's.
            out += [(ip, port, mx) for ip in await addresses(self._resolver, mx)]
        return out

    async def send(self, envelope: OutboundEnvelope) -> None:
        domain = envelope.recipient.rpartition("@")[2]
        hosts = await self.targets(domain)
        last: DeliveryError | None = None
        for host, port, tls_name in hosts:
            try:
                await self._send_via(host, port, tls_name, envelope)
                return
            except DeliveryError as exc:
                # A reply from a server is its answer; only network trouble tries the next MX.
                if exc.code is not None:
                    raise
                last = exc
        raise last or DeliveryError("no host to deliver to", permanent=False)

    async def _send_via(
        self, host: str, port: int, tls_name: str, envelope: OutboundEnvelope
    ) -> None:
        verify = envelope.tls_required
        conn = await self._checkout(host, port, tls_name, verify)
        if envelope.tls_required and not conn.tls:
            await _quit(conn.client)
            raise DeliveryError("peer offers no STARTTLS and TLS is required", permanent=False)
        options: list[str] = []
        if not (envelope.recipient.isascii() and envelope.mail_from.isascii()):
            # An internationalised address (RFC 6531) goes only to a peer offering SMTPUTF8;
            # rewriting it is not ours to do, so without the extension it bounces.
            if not conn.client.supports_extension("smtputf8"):
                await _quit(conn.client)
                raise DeliveryError(
                    "address needs SMTPUTF8, which the peer does not offer",
                    permanent=True,
                    code=553,
                )
            options = ["SMTPUTF8"]
        client = conn.client
        encoding = "utf-8" if options else "ascii"
        if client.supports_extension("size"):
            options = [f"SIZE={len(envelope.data)}", *options]
        try:
            # sendmail's steps, with a pause before DATA for the caller (``before_data``).
            await client.mail(envelope.mail_from, options=options, encoding=encoding)
            await client.rcpt(envelope.recipient, encoding=encoding)
            if envelope.before_data is not None:
                await envelope.before_data()
            await client.data(envelope.data)
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, UnicodeError) as exc:
            await _quit(conn.client)
            raise classify(exc, "send") from None
        pool = self._idle.setdefault((host, port, verify), [])
        if len(pool) < self.max_idle:
            pool.append(conn)
        else:
            await _quit(conn.client)

    async def _checkout(self, host: str, port: int, tls_name: str, verify: bool) -> _Conn:
        pool = self._idle.get((host, port, verify))
        while pool:
            conn = pool.pop()
            if conn.client.is_connected:
                return conn
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname=self.config.smtp.hostname,
            timeout=self.config.delivery.timeout_seconds,
            start_tls=False,
        )
        try:
            await client.connect()
            await client.ehlo()
            tls = False
            if client.supports_extension("starttls"):
                context = self._verified if verify else self._opportunistic
                await client.starttls(tls_context=context, server_hostname=tls_name)
                await client.ehlo()
                tls = True
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            await _quit(client)
            raise classify(exc, "connect") from None
        return _Conn(client, tls)

    async def close(self) -> None:
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for conn in pool:
                await _quit(conn.client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await asyncio.wait_for(client.quit(), timeout=5)
    except Exception:
        client.close()


# -- MX lookup -------------------------------------------------------------------------------
async def mx_hosts(resolver: dns.asyncresolver.Resolver, domain: str) -> Sequence[str]:
    """MX hosts by preference; the domain itself when it has none (RFC 5321 5.1)."""
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise DeliveryError("recipient domain does not exist", permanent=True, code=550) from None
    except dns.resolver.NoAnswer:
        return [domain]
    except dns.exception.DNSException as exc:
        raise DeliveryError(f"MX lookup failed ({type(exc).__name__})", permanent=False) from None
    records = sorted(answer, key=lambda r: r.preference)
    hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]
    if hosts in ([""], ["."]) or (len(records) == 1 and records[0].exchange.to_text() == "."):
        # Null MX (RFC 7505): the domain accepts no mail.
        raise DeliveryError("recipient domain accepts no mail (null MX)", permanent=True, code=556)
    return hosts


async def addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """IPv4 then IPv6 addresses of an MX host; an IP literal is returned as it is."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype)
        except dns.exception.DNSException:
            continue
        found += [r.to_text() for r in answer]
    return found


def build_transport(config: Config) -> Transport:
    if config.delivery.maildir:
        return MaildirTransport(config.path(config.delivery.maildir))
    return SmtpTransport(config)

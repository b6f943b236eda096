"""Helpers for the inbound stories: a dict-backed DNS resolver, DKIM keys to publish and sign
with, messages composed like a mail client would, a patient with a thread to reply to, and
plain SMTP sends. Imported by the tests; the fixtures that build them live in conftest.py."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import dkim
from dnslib import QTYPE, RR, TXT, A
from dnslib.server import BaseResolver

from gateway import tokens
from gateway.models import Clinic, Patient, Thread
from gateway.outbound.dkim import generate_key
from gateway.services import Services
from tests.support.world import World


class DictResolver(BaseResolver):  # type: ignore[misc]
    """Answers from a dict {(name, "TXT"|"A"): [values]}; NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        for value in self.records.get((qname, qtype), []):
            if qtype == "TXT":
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
            elif qtype == "A":
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(value), ttl=60))
        if not reply.rr and not any(k[0] == qname for k in self.records):
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@dataclass
class Dns:
    resolver: DictResolver
    port: int

    def txt(self, name: str, value: str) -> None:
        self.resolver.records.setdefault((name.lower(), "TXT"), []).append(value)


@dataclass
class Signer:
    """A DKIM key for a sender domain, published in the test DNS."""

    domain: str
    selector: str
    private: bytes

    def sign(self, raw: bytes) -> bytes:
        sig = dkim.sign(
            raw,
            self.selector.encode(),
            self.domain.encode(),
            self.private,
            signature_algorithm=b"ed25519-sha256",
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return bytes(sig) + raw


def publish_key(dns: Dns, domain: str, selector: str = "s1") -> Signer:
    key = generate_key("ed25519")
    dns.txt(f"{selector}._domainkey.{domain}", f"v=DKIM1; k=ed25519; p={key.public_b64}")
    return Signer(domain, selector, key.private_pem.encode())


def compose(
    *,
    sender: str,
    to: str,
    body: str,
    subject: str = "Re: You have a new message",
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id or make_msgid(domain="example.org")
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@dataclass
class Story:
    """A clinic with a patient in an open thread, and tokens to reply with."""

    services: Services
    world: World
    clinic: Clinic
    patient: Patient
    thread: Thread
    extra: dict[str, Any] = field(default_factory=dict)

    async def token(self, purpose: str, subject_kind: str, subject_id: str, **data: Any) -> str:
        async with self.services.transaction() as s:
            issued = await tokens.issue(
                s,
                self.services.config.tokens,
                purpose=purpose,
                subject_kind=subject_kind,
                subject_id=subject_id,
                now=self.services.clock.now(),
                data=data,
            )
            return issued.value

    async def reply_address(
        self, patient: Patient | None = None, thread_id: str | None = None
    ) -> str:
        p = patient or self.patient
        value = await self.token(
            "reply_address", "patient", p.id, thread_id=thread_id or self.thread.id
        )
        return f"reply+{value}@{self.clinic.reply_domain}"


def send(port: int, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, tuple[int, bytes]]:
    """Send with smtplib (blocking: call through asyncio.to_thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.org")
        return client.sendmail(mail_from, rcpts, raw)


async def asend(port: int, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, Any]:
    return await asyncio.to_thread(send, port, mail_from, rcpts, raw)

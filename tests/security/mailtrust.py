"""Real peers for the mail-trust stories: a loopback DNS server, carebridge's SMTP intake on a
free port, a clinic with a patient in an open thread, and a blocking SMTP client that reports
every reply code (so a test sees each RCPT's answer, not only smtplib's summary).

Plain helpers, imported by the tests (tests/security has no shared conftest of its own)."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.careteam import threads
from gateway.inbound.intake import Intake
from gateway.inbound.smtp import SmtpPart
from gateway.models import Clinic, Notification, Patient, Thread
from gateway.outbound import links
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.services import Services
from handlers import ROUTING
from tests.support.world import World

PATIENT_EMAIL = "pat@example.org"


def with_dns(services: Services, dns_port: int, **inbound: Any) -> Services:
    """``services`` whose DNS is the loopback server, with some ``[inbound]`` keys set."""
    cfg = services.config
    cfg = dataclasses.replace(
        cfg,
        dns=dataclasses.replace(
            cfg.dns, nameservers=(f"127.0.0.1:{dns_port}",), timeout_seconds=2.0
        ),
        inbound=dataclasses.replace(cfg.inbound, **inbound),
    )
    return dataclasses.replace(services, config=cfg)


@asynccontextmanager
async def smtp_intake(services: Services) -> AsyncIterator[SmtpPart]:
    part = SmtpPart(services, Intake(services, ROUTING))
    await part.start()
    try:
        yield part
    finally:
        await part.stop()


@dataclasses.dataclass
class Scene:
    services: Services
    world: World
    clinic: Clinic
    patient: Patient
    thread: Thread


async def scene(services: Services, **clinic_kw: Any) -> Scene:
    world = World(services)
    clinic = await world.clinic(**clinic_kw)
    await world.staff(clinic, role="nurse")
    patient = await world.patient(clinic, email=PATIENT_EMAIL)
    async with services.transaction() as s:
        thread = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject="About my dose",
            body="Can I take it with food?",
            source="portal",
            actor=f"patient:{patient.id}",
        )
    return Scene(services, world, clinic, patient, thread)


async def new_message_email(sc: Scene) -> tuple[Notification, links.Addressing]:
    """A "new message" notification minted as delivery mints it: its link, its reply+
    Reply-To and its bounce+ envelope sender, all real tokens of the clinic."""
    services = sc.services
    now = services.clock.now()
    async with services.transaction() as s:
        row = await enqueue(
            s,
            services.keyring,
            notice=Notice(kind=Kind.NEW_MESSAGE, thread_id=sc.thread.id),
            clinic_id=sc.clinic.id,
            recipient=sc.patient.email,
            now=now,
            patient_id=sc.patient.id,
            coalesce_key=f"test:{now.timestamp()}:{id(sc)}",
        )
        clinic = await s.get(Clinic, sc.clinic.id)
        assert clinic is not None
        addressing = await links.mint(s, services.config, row, clinic, now)
        row.message_id = f"<{row.id}.0@{clinic.sending_domain}>"
        row.bounce_token_id = addressing.bounce_token_id
        row.state, row.sent_at, row.attempts = "sent", now, 1
    return row, addressing


def rcpt_codes(port: int, mail_from: str, rcpts: list[str]) -> list[int]:
    """Open one transaction and answer every RCPT's code (blocking: use :func:`arcpt_codes`)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        code, _ = client.mail(mail_from)
        assert code == 250, code
        return [client.rcpt(r)[0] for r in rcpts]


async def arcpt_codes(port: int, mail_from: str, rcpts: list[str]) -> list[int]:
    return await asyncio.to_thread(rcpt_codes, port, mail_from, rcpts)


def send_raw(port: int, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        return client.sendmail(mail_from, rcpts, raw)


async def asend_raw(port: int, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, Any]:
    return await asyncio.to_thread(send_raw, port, mail_from, rcpts, raw)

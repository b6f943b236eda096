"""Small building blocks the reliability suites share: a reply address, a mail, live parts.

They use the same public functions the product uses (tokens.issue, threads.create_thread,
the SMTP and delivery parts), so a suite exercises the real paths, not a copy of them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from email.utils import format_datetime

from gateway import tokens
from gateway.careteam import threads
from gateway.models import Clinic, Patient, Thread
from gateway.services import Services


@dataclass
class ReplyWorld:
    clinic: Clinic
    patient: Patient
    thread: Thread
    address: str  # reply+TOKEN@<reply domain>


async def reply_world(services: Services, world, **patient_kw: object) -> ReplyWorld:  # type: ignore[no-untyped-def]
    clinic = await world.clinic()
    patient = await world.patient(clinic, **patient_kw)
    async with services.transaction() as s:
        thread = await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject="a question",
            body="first words",
            actor="test",
        )
        token = await tokens.issue(
            s,
            services.config.tokens,
            purpose="reply_address",
            subject_kind="patient",
            subject_id=patient.id,
            now=services.clock.now(),
            data={"thread_id": thread.id},
        )
    return ReplyWorld(clinic, patient, thread, f"reply+{token.value}@{clinic.reply_domain}")


def reply_mail(
    sender: str, to: str, body: str = "thank you", *, message_id: str | None = None, when=None
) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    """A plain reply as a patient's mail program would send it; returns (Message-ID, bytes)."""
    mid = message_id or f"<{secrets.token_hex(10)}@example.org>"
    date = format_datetime(when) if when is not None else "Mon, 02 Mar 2026 15:00:00 +0000"
    raw = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: Re: your message\r\n"
        f"Date: {date}\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
    return mid, raw

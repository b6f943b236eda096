"""What every inbound handler sees and may answer.

A handler is one small object with a ``name`` and one async method, :meth:`Handler.handle`,
returning a small typed outcome. Handlers never commit, never send mail and never write
quarantine rows: the intake engine turns the outcome into the message's state, a quarantine
row, metrics and audit events, in one place (``gateway/inbound/intake.py``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.inbound.auth import AuthVerdict, Envelope
from gateway.inbound.parsing import Sender
from gateway.models import Clinic, InboundMessage, Patient, Token
from gateway.portal.patients import email_index
from gateway.services import Services


@dataclass
class Context:
    services: Services
    session: AsyncSession
    inbound: InboundMessage
    msg: EmailMessage
    sender: Sender | None
    verdict: AuthVerdict
    envelope: Envelope
    # The live token named by the recipient address (None when expired since RCPT time).
    token: Token | None
    clinic: Clinic | None
    now: datetime
    # Set by the routing table when the message is an automatic reply, with the reason.
    automated: str | None = None


@dataclass(frozen=True)
class Filed:
    """The patient's words were stored in a thread."""

    thread_id: str
    message_id: str


@dataclass(frozen=True)
class Confirmed:
    """A registration reply confirmed the address (and perhaps agreed to the terms)."""

    patient_id: str
    terms_agreed: bool


@dataclass(frozen=True)
class BounceRecorded:
    notification_id: str
    severity: str  # hard, soft, policy
    status: str  # enhanced status code, e.g. 5.1.1 ('' when the bounce gave none)


@dataclass(frozen=True)
class Quarantine:
    """May not enter a thread: held for an operator with a PHI-free reason code."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Ignore:
    """Nothing to do (automatic replies): never answered, never filed."""

    reason: str
    drop_raw: bool = False  # over the daily cap: not even kept


@dataclass(frozen=True)
class Keep:
    """Kept for operators (postmaster@, abuse@)."""

    reason: str


Outcome = Filed | Confirmed | BounceRecorded | Quarantine | Ignore | Keep


class Handler(Protocol):
    name: str

    async def handle(self, ctx: Context) -> Outcome: ...


async def authenticated_patient(ctx: Context, purpose: str) -> Patient | Quarantine:
    """The patient a patient-token names, if the message provably comes from them.

    Both must hold: the token (live, right purpose) names this patient, and a DKIM or SPF
    identity aligned with the From domain passed, with the From address being the one on file.
    """
    token = ctx.token
    if token is None or token.purpose != purpose:
        return Quarantine("token_expired", "the address token is no longer live")
    if token.subject_kind != "patient":
        return Quarantine("token_invalid", "the token does not name a patient")
    patient = await ctx.session.get(Patient, token.subject_id)
    if patient is None:
        return Quarantine("token_invalid", "the token's patient no longer exists")
    if ctx.clinic is not None and ctx.clinic.org_id != patient.org_id:
        return Quarantine("token_invalid", "the token's patient is not in this organisation")
    if ctx.sender is None:
        return Quarantine("no_valid_from", "no single valid From address")
    if not ctx.verdict.aligned_pass:
        v = ctx.verdict
        return Quarantine("not_authenticated", f"dkim={v.dkim} spf={v.spf} none aligned with From")
    on_file = patient.email_index
    claimed = email_index(ctx.services.keyring, ctx.sender.address)
    if not hmac.compare_digest(on_file, claimed):
        return Quarantine("sender_not_patient", "From is not the address on file for the token")
    if patient.status == "disabled":
        return Quarantine("patient_disabled", "the patient's account is disabled")
    return patient

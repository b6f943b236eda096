"""Completing registration from the emailed link, and resetting a forgotten password.

The link's GET only looks (``tokens.peek``): mail scanners fetch links, and a fetch must
change nothing. The patient's POST consumes the token, records agreement to one terms version,
marks the address verified (only its owner could have received the link), sets an argon2id
password that zxcvbn judges strong enough, and optionally an authenticator (TOTP). The link
never signs anyone in: the patient then signs in with the password they just chose.

The link's token is the link's alone (purpose ``registration``); the ``register+`` reply
address of the same invitation has its own, and consuming either spends both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyotp
from sqlalchemy.ext.asyncio import AsyncSession
from zxcvbn import zxcvbn

from gateway import audit, tokens
from gateway.errors import UsageError
from gateway.models import Clinic, Patient, Token
from gateway.passwords import hash_password
from gateway.portal import patients, terms
from gateway.services import Services

log = logging.getLogger("carebridge.portal.signup")

MIN_LENGTH = 10
MIN_SCORE = 3  # zxcvbn 0..4: 3 is "safely unguessable" against online attacks


class FormProblem(UsageError):
    """One field was filled in wrongly; ``code`` picks the translated message."""

    def __init__(self, field: str, code: str, detail: str = "") -> None:
        super().__init__(f"{field}: {code}")
        self.field, self.code, self.detail = field, code, detail


def password_problem(password: str, confirm: str, user_inputs: list[str]) -> FormProblem | None:
    """Why a new password is refused, or None."""
    if password != confirm:
        return FormProblem("password", "mismatch")
    if len(password) < MIN_LENGTH:
        return FormProblem("password", "short")
    if len(password) > 256:
        return FormProblem("password", "long")
    verdict = zxcvbn(password[:100], user_inputs=[u for u in user_inputs if u])
    if verdict["score"] < MIN_SCORE:
        feedback = verdict.get("feedback") or {}
        return FormProblem("password", "weak", str(feedback.get("warning") or ""))
    return None


@dataclass(frozen=True)
class LinkView:
    token: Token
    patient: Patient
    clinic: Clinic


async def view_link(session: AsyncSession, services: Services, value: str) -> LinkView | None:
    """What the registration page shows. Never consumes or changes anything."""
    row = await tokens.peek(session, value, "registration", services.clock.now())
    if row is None or row.subject_kind != "patient":
        return None
    patient = await session.get(Patient, row.subject_id)
    if patient is None:
        return None
    clinic_id = row.data.get("clinic_id") if row.data else None
    clinic = await session.get(Clinic, clinic_id) if clinic_id else None
    if clinic is None:
        enrolment = await patients.current_enrolment(session, patient.id)
        clinic = await session.get(Clinic, enrolment.clinic_id) if enrolment else None
    if clinic is None:
        return None
    return LinkView(row, patient, clinic)


def _user_inputs(patient: Patient) -> list[str]:
    local = patient.email.rpartition("@")[0]
    return [patient.given_name, patient.family_name, local, str(patient.date_of_birth.year)]


async def complete_registration(
    services: Services,
    value: str,
    *,
    agree: bool,
    terms_version: str,
    password: str,
    confirm: str,
    totp_secret: str = "",
    totp_code: str = "",
) -> str:
    """Check the form, then consume the link and activate the account; return the patient id."""
    now = services.clock.now()
    async with services.sessions() as s:
        view = await view_link(s, services, value)
        if view is None:
            raise FormProblem("token", "invalid")
        inputs = _user_inputs(view.patient)
    if not agree or terms_version != terms.CURRENT:
        raise FormProblem("agree", "required")
    problem = await services.executors.passwords.run(password_problem, password, confirm, inputs)
    if problem is not None:
        raise problem
    secret = totp_secret.strip() if totp_code.strip() else ""
    if secret and not _totp_ok(secret, totp_code, services):
        raise FormProblem("code", "totp")
    # zxcvbn and argon2 are CPU work: off the event loop and outside the write transaction.
    hashed = await services.executors.passwords.run(hash_password, password)
    async with services.transaction() as s:
        view = await view_link(s, services, value)
        if view is None:
            raise FormProblem("token", "invalid")
        await tokens.consume(s, value, "registration", now)
        patient = view.patient
        patient.terms_version = terms.CURRENT
        patient.terms_agreed_at = now
        if patient.email_verified_at is None:
            patient.email_verified_at = now
        patient.password_hash = hashed
        if secret:
            patient.totp_secret = secret
            # The code just typed is used: sign-in will not take it again (accounts.py).
            patient.totp_last_step = pyotp.TOTP(secret).timecode(now)
        if patient.status == "pending":
            patient.status = "active"
        await audit.record(
            s,
            f"patient:{patient.id}",
            "patient.register",
            "patient",
            patient.id,
            at=now,
            terms_version=terms.CURRENT,
            totp=bool(secret),
            token_id=view.token.id,
        )
        log.info("registration completed patient=%s", patient.id)
        return patient.id


def _totp_ok(secret: str, code: str, services: Services) -> bool:
    try:
        return pyotp.TOTP(secret).verify(
            code.strip(), for_time=services.clock.now(), valid_window=1
        )
    except (ValueError, TypeError):  # a tampered secret that is not base32
        return False


def new_totp_secret() -> str:
    return pyotp.random_base32()

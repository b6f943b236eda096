"""Enrolment at the desk and online, and the desk's view of accounts still pending.

Desk: staff checked the person's ID, so the account is created and the registration email is
queued. An address that already belongs to a patient of this clinic gives that account back
(as before). One that belongs to a patient of another clinic is never moved, changed or shown:
the patient is asked to connect (:mod:`gateway.portal.connections`) and the desk only learns
"this person already has an account; we asked them to connect to your clinic", whatever name
and date of birth were typed. The CLI and the REST API enrol through :func:`desk_enrol` too.

Online: anyone may type a clinic's enrolment code, a name, a date of birth and an address.
The answer is always the same ("if the details are right, an email is on its way"), whether or
not the address already has an account, so the form cannot be used to find out who is a
patient. An address that already has an account is never moved or changed by this form: a
pending account simply gets its invitation again (it goes to that address, not to whoever
typed it). Attempts are rate-limited per address and per client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit, throttle
from gateway.addresses import index_form
from gateway.errors import InvalidAddressError, UsageError
from gateway.models import Clinic, ClinicConnectionRequest, Patient
from gateway.portal import connections, patients
from gateway.portal.invitations import invite
from gateway.services import Services

log = logging.getLogger("carebridge.portal.enrolment")


@dataclass(frozen=True)
class DeskResult:
    """What the desk may know. With ``connection`` set the account belongs to another clinic:
    ``patient`` is None so that no caller can show, link or return it."""

    patient: Patient | None
    created: bool
    reasons: list[str]
    connection: ClinicConnectionRequest | None = None


async def desk_enrol(
    session: AsyncSession,
    services: Services,
    *,
    clinic: Clinic,
    given_name: str,
    family_name: str,
    date_of_birth: date,
    email: str,
    language: str,
    actor: str,
    source: str = "desk",
) -> DeskResult:
    """Enrol after an ID check and queue the registration email (if still pending); for a
    patient of another clinic, ask them to connect instead and change nothing."""
    result = await patients.enroll(
        session,
        services.keyring,
        clinic=clinic,
        given_name=given_name,
        family_name=family_name,
        date_of_birth=date_of_birth,
        email=email,
        source=source,
        actor=actor,
        language=language,
    )
    if result.elsewhere:
        request = await connections.ask(
            session, services, patient=result.patient, clinic=clinic, actor=actor, source=source
        )
        log.info("desk enrolment: connection=%s clinic=%s", request.id, clinic.id)
        return DeskResult(None, False, [], connection=request)
    reasons = patients.pending_reasons(result.patient)
    if reasons:
        await invite(session, services, patient=result.patient, clinic=clinic)
    log.info("desk enrolment patient=%s clinic=%s", result.patient.id, clinic.id)
    return DeskResult(result.patient, result.created, reasons)


class EnrolRefused(UsageError):
    """The online form was filled in wrongly (never says whether a person exists)."""


class TooManyAttempts(UsageError):
    def __init__(self, minutes: int) -> None:
        super().__init__("too many attempts")
        self.minutes = minutes


def parse_dob(value: str) -> date:
    try:
        dob = date.fromisoformat(value.strip())
    except ValueError:
        raise EnrolRefused("dob") from None
    if dob.year < 1900:
        raise EnrolRefused("dob")
    return dob


async def online_enrol(
    services: Services,
    *,
    code: str,
    given_name: str,
    family_name: str,
    date_of_birth: str,
    email: str,
    client_key: str,
    language: str,
) -> None:
    """Enrol from the public form. Returns nothing: the caller shows one answer for all."""
    now = services.clock.now()
    if not given_name.strip() or not family_name.strip():
        raise EnrolRefused("name")
    dob = parse_dob(date_of_birth)
    if dob > now.date():
        raise EnrolRefused("dob")
    try:
        normal = index_form(email.strip())
    except InvalidAddressError:
        raise EnrolRefused("email") from None
    client = services.keyring.blind_index(client_key, "enrol-client")
    person = services.keyring.blind_index(normal, "enrol")
    async with services.transaction() as s:
        # Counted before the code is checked, so guessing codes is throttled as well.
        until = await throttle.hit(s, throttle.ENROL_CLIENT, client, now)
        if until is None:
            until = await throttle.hit(s, throttle.ENROL, person, now)
    if until is not None:
        raise TooManyAttempts(max(1, int((until - now).total_seconds() + 59) // 60))
    async with services.transaction() as s:
        clinic = await clinic_by_code(s, code)
        if clinic is None:
            raise EnrolRefused("code")
        existing = await patients.find_by_email(s, services.keyring, clinic.org_id, normal)
        if existing is None:
            await desk_enrol(
                s,
                services,
                clinic=clinic,
                given_name=given_name,
                family_name=family_name,
                date_of_birth=dob,
                email=email.strip(),
                language=language if language in ("en", "es") else "en",
                actor="online",
                source="online",
            )
        elif patients.pending_reasons(existing):
            enrolment = await patients.current_enrolment(s, existing.id)
            home = await s.get(Clinic, enrolment.clinic_id) if enrolment else None
            await invite(s, services, patient=existing, clinic=home or clinic)
            await audit.record(s, "online", "patient.enrol_repeat", "patient", existing.id, at=now)
        else:
            await audit.record(
                s, "online", "patient.enrol_existing", "patient", existing.id, at=now
            )


async def clinic_by_code(session: AsyncSession, code: str) -> Clinic | None:
    value = code.strip().upper()
    if not value or len(value) > 32:
        return None
    return await session.scalar(select(Clinic).where(Clinic.enrolment_code == value))


async def pending_at(session: AsyncSession, clinic: Clinic) -> list[tuple[Patient, list[str]]]:
    """Accounts enrolled at ``clinic`` that cannot be used yet, with the reasons (for the desk)."""
    rows = await patients.list_patients(session, clinic)
    out = []
    for patient, _enrolment in rows:
        reasons = patients.pending_reasons(patient)
        if reasons:
            out.append((patient, reasons))
    return out

"""Patients: enrolment at a clinic, lookup by blind index, moves between clinics.

Enrolling never moves a patient who is enrolled at another clinic: :func:`enroll` leaves them
where they are and says so (``EnrolResult.enrolment is None``), and the caller asks the
patient to connect (:mod:`gateway.portal.connections`). Only the patient's approval calls
:func:`move_to_clinic` for another clinic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.addresses import index_form, validate_address
from gateway.crypto import KeyRing
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, Enrolment, Patient, utcnow

ENROL_SOURCES = ("desk", "online", "api", "cli", "demo")


@dataclass(frozen=True)
class EnrolResult:
    patient: Patient
    # None: the account is enrolled at another clinic and nothing was changed.
    enrolment: Enrolment | None
    created: bool  # False when the person already had an account in this organisation

    @property
    def elsewhere(self) -> bool:
        """The address belongs to a patient of another clinic (never shown to the caller)."""
        return self.enrolment is None


def email_index(keyring: KeyRing, address: str) -> str:
    return keyring.blind_index(index_form(address), "patient-email")


async def find_by_email(
    session: AsyncSession, keyring: KeyRing, org_id: str, address: str
) -> Patient | None:
    idx = email_index(keyring, address)
    return await session.scalar(
        select(Patient).where(Patient.org_id == org_id, Patient.email_index == idx)
    )


async def current_enrolment(session: AsyncSession, patient_id: str) -> Enrolment | None:
    return await session.scalar(
        select(Enrolment)
        .where(Enrolment.patient_id == patient_id, Enrolment.ended_at.is_(None))
        .order_by(Enrolment.started_at.desc())
        .limit(1)
    )


async def enroll(
    session: AsyncSession,
    keyring: KeyRing,
    *,
    clinic: Clinic,
    given_name: str,
    family_name: str,
    date_of_birth: date,
    email: str,
    source: str,
    actor: str,
    language: str = "en",
    phone: str | None = None,
) -> EnrolResult:
    """Enrol a patient at a clinic. An account already enrolled here is returned as it is;
    one enrolled at another clinic is left untouched (``enrolment`` None)."""
    if source not in ENROL_SOURCES:
        raise UsageError(f"enrolment source {source!r} is unknown")
    if not given_name.strip() or not family_name.strip():
        raise UsageError("given and family names are required")
    if date_of_birth > utcnow().date():
        raise UsageError("date of birth is in the future")
    if language not in ("en", "es"):
        raise UsageError("language must be 'en' or 'es'")
    address = validate_address(email)
    patient = await find_by_email(session, keyring, clinic.org_id, address)
    created = patient is None
    if patient is None:
        patient = Patient(
            org_id=clinic.org_id,
            given_name=given_name.strip(),
            family_name=family_name.strip(),
            date_of_birth=date_of_birth,
            email=address,
            email_index=email_index(keyring, address),
            phone=phone,
            language=language,
            notification_prefs={},
        )
        session.add(patient)
        await session.flush()
        await audit.record(session, actor, "patient.create", "patient", patient.id, source=source)
    else:
        current = await current_enrolment(session, patient.id)
        if current is None or current.clinic_id != clinic.id:
            return EnrolResult(patient, None, created=False)
    enrolment = await move_to_clinic(session, patient, clinic, source=source, actor=actor)
    return EnrolResult(patient, enrolment, created)


async def move_to_clinic(
    session: AsyncSession, patient: Patient, clinic: Clinic, *, source: str, actor: str
) -> Enrolment:
    """End the current enrolment (kept as history) and start one at ``clinic``."""
    if clinic.org_id != patient.org_id:
        raise UsageError("a patient can only move between clinics of the same organisation")
    current = await current_enrolment(session, patient.id)
    if current is not None and current.clinic_id == clinic.id:
        return current
    now = utcnow()
    if current is not None:
        current.ended_at = now
    enrolment = Enrolment(
        patient_id=patient.id, clinic_id=clinic.id, source=source, enrolled_by=actor, started_at=now
    )
    session.add(enrolment)
    await session.flush()
    await audit.record(
        session,
        actor,
        "patient.enrol",
        "enrolment",
        enrolment.id,
        patient_id=patient.id,
        clinic_id=clinic.id,
        previous_clinic_id=current.clinic_id if current else None,
    )
    return enrolment


async def get_patient(session: AsyncSession, patient_id: str) -> Patient:
    patient = await session.get(Patient, patient_id)
    if patient is None:
        raise NotFoundError(f"no patient {patient_id!r}")
    return patient


def pending_reasons(patient: Patient) -> list[str]:
    """Why an account is still pending, for the desk (no PHI in the reasons)."""
    reasons = []
    if patient.email_verified_at is None:
        reasons.append("email not confirmed")
    if patient.terms_agreed_at is None:
        reasons.append("terms not agreed")
    return reasons


async def list_patients(
    session: AsyncSession, clinic: Clinic | None = None
) -> Sequence[tuple[Patient, Enrolment | None]]:
    q = select(Patient, Enrolment).outerjoin(
        Enrolment, (Enrolment.patient_id == Patient.id) & Enrolment.ended_at.is_(None)
    )
    if clinic is not None:
        q = q.where(Enrolment.clinic_id == clinic.id)
    rows = (await session.execute(q.order_by(Patient.created_at))).all()
    return [(p, e) for p, e in rows]

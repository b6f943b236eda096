"""Typed requests a patient composes: appointment, medication renewal, immunization record
copy, and a non-urgent question; plus replies in an existing thread.

A form becomes a :class:`Draft` (subject, body, structured details, all stored encrypted by
:mod:`gateway.careteam.threads`). Every draft is screened for red-flag words before it is sent; the
web layer shows the "call 911 or the clinic" page on a hit and sends only if the patient
confirms, flagging the thread urgent. New threads go to the clinic the patient is enrolled at
now, so a patient who moved keeps the old threads and writes to the new clinic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.careteam import threads
from gateway.errors import UsageError
from gateway.models import Clinic, Message, Patient, Thread
from gateway.portal import patients, urgent
from gateway.portal.signup import FormProblem
from gateway.services import Services

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat")
TIMES = ("morning", "afternoon", "evening")
IMMUNIZATION_PURPOSES = ("school", "work", "travel", "personal")
MAX_FIELD = 2000


@dataclass(frozen=True)
class Draft:
    request_type: str
    subject: str
    body: str
    details: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        return [self.subject, self.body, *(str(v) for v in self.details.values())]


def medications_of(patient: Patient) -> list[str]:
    """The patient's medication list from ``Patient.clinical`` (strings or {"name": ...})."""
    meds = (patient.clinical or {}).get("medications") or []
    out = []
    for m in meds:
        name = m.get("name") if isinstance(m, dict) else m
        if isinstance(name, str) and name.strip():
            out.append(name.strip())
    return out


def _text(form: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = str(form.get(name) or "").strip()
    if required and not value:
        raise FormProblem(name, "required")
    if len(value) > MAX_FIELD:
        raise FormProblem(name, "long")
    return value


def _choices(values: Sequence[str], allowed: Sequence[str]) -> list[str]:
    return [v for v in allowed if v in values]


def build_draft(
    request_type: str, form: Mapping[str, Any], lists: Mapping[str, list[str]], patient: Patient
) -> Draft:
    """Turn a compose form into a draft, or raise :class:`FormProblem` for the first bad field.

    ``lists`` holds multi-valued fields (checkbox groups) as lists.
    """
    note = _text(form, "message")
    if request_type == "appointment":
        reason = _text(form, "reason", required=True)
        days = _choices(lists.get("days", []), DAYS)
        times = _choices(lists.get("times", []), TIMES)
        body = reason + (f"\n\n{note}" if note else "")
        return Draft(
            "appointment",
            "Appointment request",
            body,
            {"reason": reason, "preferred_days": days, "preferred_times": times},
        )
    if request_type == "medication_renewal":
        chosen = _text(form, "medication")
        other = _text(form, "medication_other")
        known = medications_of(patient)
        if chosen and chosen != "__other__" and chosen not in known:
            raise FormProblem("medication", "unknown")
        medication = other if (not chosen or chosen == "__other__") else chosen
        if not medication:
            raise FormProblem("medication", "required")
        pharmacy = _text(form, "pharmacy", required=True)
        body = f"{medication}\n{pharmacy}" + (f"\n\n{note}" if note else "")
        return Draft(
            "medication_renewal",
            "Medication renewal",
            body,
            {"medication": medication, "from_list": medication in known, "pharmacy": pharmacy},
        )
    if request_type == "immunization_record":
        purpose = _text(form, "purpose", required=True)
        if purpose not in IMMUNIZATION_PURPOSES:
            raise FormProblem("purpose", "required")
        return Draft(
            "immunization_record",
            "Immunization record copy",
            note or "Please send a copy of my immunization record.",
            {"purpose": purpose},
        )
    if request_type == "question":
        subject = _text(form, "subject", required=True)
        if len(subject) > threads.MAX_SUBJECT_CHARS:
            raise FormProblem("subject", "long")
        body = _text(form, "message", required=True)
        return Draft("question", subject, body, {})
    raise UsageError("unknown request type")


async def home_clinic(services: Services, session: Any, patient: Patient) -> Clinic:
    enrolment = await patients.current_enrolment(session, patient.id)
    clinic = await session.get(Clinic, enrolment.clinic_id) if enrolment else None
    if clinic is None:
        raise UsageError("this account is not enrolled at any clinic")
    assert isinstance(clinic, Clinic)
    return clinic


async def red_flags(services: Services, patient_id: str, texts: list[str]) -> list[str]:
    """Red-flag terms in ``texts`` using the lexicon of the patient's current clinic."""
    async with services.sessions() as s:
        patient = await patients.get_patient(s, patient_id)
        clinic = await home_clinic(services, s, patient)
        return urgent.screen(texts, clinic.urgent_terms or [])


async def send(services: Services, patient_id: str, draft: Draft, *, urgent_flag: bool) -> Thread:
    """Open the thread at the patient's current clinic (routing, SLA and notices included)."""
    async with services.transaction() as s:
        patient = await patients.get_patient(s, patient_id)
        clinic = await home_clinic(services, s, patient)
        return await threads.create_thread(
            s,
            services,
            patient=patient,
            clinic=clinic,
            request_type=draft.request_type,
            subject=draft.subject,
            body=draft.body,
            details=draft.details,
            urgent=urgent_flag,
            source="portal",
            actor=f"patient:{patient.id}",
        )


async def reply(
    services: Services, patient_id: str, thread_id: str, body: str, *, urgent_flag: bool
) -> Message | None:
    """A patient's reply in their own thread; None if the thread is not theirs."""
    async with services.transaction() as s:
        thread = await threads.thread_for_patient(s, thread_id, patient_id)
        if thread is None:
            return None
        if urgent_flag:
            thread.urgent = True
        return await threads.post_patient_message(
            s, services, thread=thread, body=body, source="portal", actor=f"patient:{patient_id}"
        )

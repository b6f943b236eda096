"""What the patient reads: the inbox (threads with unread state, appointment reminders) and
one thread. Opening a thread is a PHI read, so it is audited every time, and it clears the
thread's unread mark. Also the patient's notification preferences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from gateway import audit
from gateway.careteam import threads
from gateway.models import Appointment, Clinic, Message, Patient, Thread
from gateway.outbound.notify import OPTIONAL_KINDS
from gateway.portal import patients
from gateway.services import Services


@dataclass(frozen=True)
class InboxRow:
    thread: Thread
    clinic_name: str


@dataclass(frozen=True)
class Inbox:
    patient: Patient
    clinic: Clinic | None
    rows: list[InboxRow]
    appointments: Sequence[Appointment]
    unread: int


async def inbox(services: Services, patient_id: str) -> Inbox:
    now = services.clock.now()
    async with services.sessions() as s:
        patient = await patients.get_patient(s, patient_id)
        enrolment = await patients.current_enrolment(s, patient_id)
        clinic = await s.get(Clinic, enrolment.clinic_id) if enrolment else None
        found = (
            await s.execute(
                select(Thread, Clinic.name)
                .join(Clinic, Clinic.id == Thread.clinic_id)
                .where(Thread.patient_id == patient_id)
                .order_by(Thread.updated_at.desc(), Thread.id)
            )
        ).all()
        appointments = (
            await s.scalars(
                select(Appointment)
                .where(
                    Appointment.patient_id == patient_id,
                    Appointment.starts_at > now,
                    Appointment.cancelled_at.is_(None),
                )
                .order_by(Appointment.starts_at)
                .limit(10)
            )
        ).all()
    rows = [InboxRow(t, name) for t, name in found]
    return Inbox(
        patient, clinic, rows, appointments, sum(1 for r in rows if r.thread.patient_unread)
    )


@dataclass(frozen=True)
class ThreadView:
    thread: Thread
    messages: Sequence[Message]
    clinic_name: str


async def read_thread(services: Services, patient_id: str, thread_id: str) -> ThreadView | None:
    """The thread with its (non-internal) messages, marked read and audited; None if not theirs."""
    now = services.clock.now()
    async with services.transaction() as s:
        thread = await threads.thread_for_patient(s, thread_id, patient_id)
        if thread is None:
            return None
        messages = await threads.messages_of(s, thread.id, include_internal=False)
        unread_ids = [m.id for m in messages if m.author_kind != "patient" and m.read_at is None]
        if unread_ids:
            await s.execute(
                update(Message)
                .where(Message.id.in_(unread_ids))
                .values(read_at=now)
                .execution_options(synchronize_session=False)
            )
        thread.patient_unread = False
        await audit.record(
            s,
            f"patient:{patient_id}",
            "thread.read",
            "thread",
            thread.id,
            at=now,
            messages_marked_read=len(unread_ids),
        )
        clinic = await s.get(Clinic, thread.clinic_id)
        return ThreadView(thread, messages, clinic.name if clinic else "")


def wanted_kinds(patient: Patient) -> set[str]:
    prefs = patient.notification_prefs or {}
    return {str(k) for k in OPTIONAL_KINDS if prefs.get(str(k), True)}


async def save_preferences(
    services: Services, patient_id: str, *, kinds: set[str], language: str
) -> None:
    """Which optional emails the patient wants, and their language (en/es)."""
    async with services.transaction() as s:
        patient = await patients.get_patient(s, patient_id)
        patient.notification_prefs = {str(k): str(k) in kinds for k in sorted(OPTIONAL_KINDS)}
        if language in ("en", "es"):
            patient.language = language
        await audit.record(
            s,
            f"patient:{patient_id}",
            "patient.preferences",
            "patient",
            patient_id,
            at=services.clock.now(),
            language=patient.language,
            kinds=sorted(k for k, v in patient.notification_prefs.items() if v),
        )


def local_time(when: datetime, clinic: Clinic | None) -> datetime:
    from zoneinfo import ZoneInfo

    return when.astimezone(ZoneInfo(clinic.timezone if clinic else "UTC"))

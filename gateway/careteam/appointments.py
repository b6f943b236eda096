"""Appointments and their reminders (48 hours and 2 hours before), cancellable.

Reminders are PHI-free ("you have an upcoming appointment; see the portal"); the appointment
itself is only a time and the integration's opaque id. Each reminder is claimed by a
compare-and-set on its own column before it is queued, so it is sent at most once however many
times (or on however many nodes) the job runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError, UsageError
from gateway.models import Appointment, Clinic, Patient
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.services import Services

log = logging.getLogger("carebridge.reminders")

# (column, how long before the appointment). Ordered latest-first: when a late booking is
# already inside the 48 h window, only the nearer reminder is worth sending.
REMINDERS: tuple[tuple[str, timedelta], ...] = (
    ("reminded_2h_at", timedelta(hours=2)),
    ("reminded_48h_at", timedelta(hours=48)),
)
BATCH = 200


async def schedule(
    session: AsyncSession,
    services: Services,
    *,
    clinic: Clinic,
    patient: Patient,
    starts_at: datetime,
    external_id: str | None = None,
    actor: str,
) -> Appointment:
    """Record an appointment; reminders follow from the scheduler."""
    now = services.clock.now()
    if starts_at.tzinfo is None:
        raise UsageError("the appointment time needs a timezone offset, e.g. 2026-03-02T15:00Z")
    if starts_at <= now:
        raise UsageError("the appointment time is in the past; reminders need a future time")
    if external_id:
        existing = await session.scalar(
            select(Appointment).where(
                Appointment.clinic_id == clinic.id, Appointment.external_id == external_id
            )
        )
        if existing is not None:
            raise UsageError("an appointment with this external id already exists at the clinic")
    appt = Appointment(
        clinic_id=clinic.id,
        patient_id=patient.id,
        external_id=external_id or None,
        starts_at=starts_at,
        created_by=actor,
        created_at=now,
    )
    session.add(appt)
    await session.flush()
    await audit.record(
        session,
        actor,
        "appointment.schedule",
        "appointment",
        appt.id,
        at=now,
        patient_id=patient.id,
    )
    return appt


async def cancel(
    session: AsyncSession, services: Services, *, appointment_id: str, actor: str
) -> Appointment:
    appt = await session.get(Appointment, appointment_id)
    if appt is None:
        raise NotFoundError("no such appointment")
    now = services.clock.now()
    if appt.cancelled_at is None:
        appt.cancelled_at = now
        await session.flush()
        await audit.record(session, actor, "appointment.cancel", "appointment", appt.id, at=now)
    return appt


async def _claim(session: AsyncSession, appt_id: str, column: str, now: datetime) -> bool:
    col = getattr(Appointment, column)
    result = await session.execute(
        update(Appointment)
        .where(Appointment.id == appt_id, col.is_(None), Appointment.cancelled_at.is_(None))
        .values({column: now})
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


async def send_due_reminders(services: Services) -> int:
    """Queue every reminder that is due now; returns how many were queued."""
    now = services.clock.now()
    sent = 0
    async with services.transaction() as session:
        for index, (column, before) in enumerate(REMINDERS):
            col = getattr(Appointment, column)
            due: Sequence[Appointment] = (
                await session.scalars(
                    select(Appointment)
                    .where(
                        Appointment.cancelled_at.is_(None),
                        col.is_(None),
                        Appointment.starts_at > now,
                        Appointment.starts_at <= now + before,
                    )
                    .order_by(Appointment.starts_at)
                    .limit(BATCH)
                )
            ).all()
            for appt in due:
                if not await _claim(session, appt.id, column, now):
                    continue
                # A nearer reminder already went (or is going) out: skip the earlier one.
                nearer = [c for c, _ in REMINDERS[:index]]
                if any(getattr(appt, c) is not None for c in nearer) or any(
                    appt.starts_at <= now + b for _, b in REMINDERS[:index]
                ):
                    continue
                if await _remind(session, services, appt, now):
                    sent += 1
    return sent


async def _remind(
    session: AsyncSession, services: Services, appt: Appointment, now: datetime
) -> bool:
    patient = await session.get(Patient, appt.patient_id)
    if patient is None or patient.status == "disabled":
        return False
    if not (patient.notification_prefs or {}).get(str(Kind.APPOINTMENT_REMINDER), True):
        return False
    await enqueue(
        session,
        services.keyring,
        notice=Notice(kind=Kind.APPOINTMENT_REMINDER),
        clinic_id=appt.clinic_id,
        recipient=patient.email,
        now=now,
        language=patient.language,
        patient_id=patient.id,
    )
    await audit.record(session, "system", "appointment.remind", "appointment", appt.id, at=now)
    log.info("reminder queued appointment=%s", appt.id)
    return True


async def upcoming_for(
    session: AsyncSession, patient_id: str, now: datetime
) -> Sequence[Appointment]:
    """A patient's coming appointments, soonest first (for the portal's "see your appointment")."""
    return (
        await session.scalars(
            select(Appointment)
            .where(
                Appointment.patient_id == patient_id,
                Appointment.cancelled_at.is_(None),
                Appointment.starts_at > now,
            )
            .order_by(Appointment.starts_at)
        )
    ).all()

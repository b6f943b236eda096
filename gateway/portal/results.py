"""Lab and test results: added by staff or an integration, shown once released.

A result is visible to the patient only when ``released_at`` is set and not in the future.
Sensitive results are never released automatically: an integration's "release now" is
ignored for them and a clinician must release them by hand (the release hold). Each release
queues a PHI-free "new result" email (if the patient wants those), and every time a patient
opens a result the read is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, Patient, Result
from gateway.models.portal import RESULT_KINDS
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.services import Services


async def add_result(
    session: AsyncSession,
    services: Services,
    *,
    patient: Patient,
    clinic: Clinic,
    kind: str,
    title: str,
    data: dict[str, Any],
    sensitive: bool = False,
    release: bool = False,
    collected_at: datetime | None = None,
    source: str = "staff",
    actor: str,
) -> Result:
    if kind not in RESULT_KINDS:
        raise UsageError(f"result kind {kind!r} is unknown; use one of: {', '.join(RESULT_KINDS)}")
    if not title.strip():
        raise UsageError("a result needs a title (the test's name)")
    now = services.clock.now()
    result = Result(
        patient_id=patient.id,
        clinic_id=clinic.id,
        kind=kind,
        title=title.strip(),
        data=data,
        sensitive=sensitive,
        collected_at=collected_at,
        source=source,
        created_at=now,
    )
    session.add(result)
    await session.flush()
    await audit.record(
        session,
        actor,
        "result.create",
        "result",
        result.id,
        at=now,
        patient_id=patient.id,
        sensitive=sensitive,
    )
    if release and not sensitive:
        await release_result(session, services, result, actor=actor)
    return result


async def release_result(
    session: AsyncSession, services: Services, result: Result, *, actor: str
) -> None:
    """Make a result visible to the patient and tell them (PHI-free) that one is waiting."""
    if result.released_at is not None:
        return
    now = services.clock.now()
    result.released_at, result.released_by = now, actor
    await audit.record(session, actor, "result.release", "result", result.id, at=now)
    patient = await session.get(Patient, result.patient_id)
    if patient is None:
        return
    prefs = patient.notification_prefs or {}
    if prefs.get(str(Kind.NEW_RESULT), True):
        await enqueue(
            session,
            services.keyring,
            notice=Notice(kind=Kind.NEW_RESULT),
            clinic_id=result.clinic_id,
            recipient=patient.email,
            now=now,
            language=patient.language,
            patient_id=patient.id,
        )


async def released_for(session: AsyncSession, patient_id: str, now: datetime) -> Sequence[Result]:
    return (
        await session.scalars(
            select(Result)
            .where(
                Result.patient_id == patient_id,
                Result.released_at.is_not(None),
                Result.released_at <= now,
            )
            .order_by(Result.released_at.desc(), Result.id)
        )
    ).all()


async def read_result(services: Services, patient_id: str, result_id: str) -> Result:
    """One released result of this patient, audited; NotFoundError otherwise (never says why)."""
    now = services.clock.now()
    async with services.transaction() as s:
        result = await s.get(Result, result_id)
        if (
            result is None
            or result.patient_id != patient_id
            or result.released_at is None
            or result.released_at > now
        ):
            raise NotFoundError("no such result")
        if result.patient_read_at is None:
            result.patient_read_at = now
        await audit.record(s, f"patient:{patient_id}", "result.read", "result", result.id, at=now)
        return result

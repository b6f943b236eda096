"""Inviting an enrolled patient to finish registering: the first email carebridge sends them.

Everyone who enrols a patient (desk, CLI, API, online enrolment, demo) calls :func:`invite`.
It only queues a ``registration_invitation``; the single-use registration token behind the
``/r/<token>`` link and the ``register+TOKEN@<reply-domain>`` Reply-To is minted when the
email is rendered (see :mod:`gateway.outbound.links`), so it is never stored in clear.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.models import Clinic, Notification, Patient
from gateway.outbound import notify
from gateway.services import Services


async def invite(
    session: AsyncSession, services: Services, *, patient: Patient, clinic: Clinic
) -> Notification:
    """Queue the registration invitation (in the caller's transaction)."""
    row = await notify.enqueue(
        session,
        services.keyring,
        notice=notify.Notice(kind=notify.Kind.REGISTRATION_INVITATION),
        clinic_id=clinic.id,
        recipient=patient.email,
        now=services.clock.now(),
        language=patient.language,
        patient_id=patient.id,
    )
    await audit.record(
        session,
        "system",
        "patient.invite",
        "patient",
        patient.id,
        clinic_id=clinic.id,
        notification_id=row.id,
    )
    return row

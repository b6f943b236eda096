"""A clinic's request to care for a patient who is enrolled at another clinic.

When a desk (or the CLI, or the REST API) enrols an address that already belongs to a patient
of another clinic in the organisation, nothing about that patient is shown and nothing moves:
:func:`ask` leaves a pending :class:`ClinicConnectionRequest` and queues a PHI-free email
(the patient's own address, the requesting clinic's name, a link to sign in). The patient
approves or declines in the portal (:func:`decide`); approving moves their enrolment the way
any move within an organisation does, with the old enrolment kept as history.

Every step is audited as a ``clinic_connection`` event carrying both clinic ids, so the admins
of the requesting clinic and of the patient's clinic both find it in their audit view.

Other organisations are other tenants: a patient is an identity within one organisation, so
the same address enrolled in another organisation is a separate account there. Nothing is
looked up, linked or revealed across that wall, and no request is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, ClinicConnectionRequest, Patient
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.portal import patients
from gateway.services import Services

log = logging.getLogger("carebridge.portal.connections")

# After a patient declines, the same clinic asking again stays quiet this long (no email):
# a desk cannot keep filling someone's inbox by enrolling their address over and over.
QUIET_AFTER_DECLINE = timedelta(days=30)


@dataclass(frozen=True)
class PendingConnection:
    request: ClinicConnectionRequest
    clinic_name: str


def _details(request: ClinicConnectionRequest) -> dict[str, str | None]:
    return {
        "patient_id": request.patient_id,
        "clinic_id": request.clinic_id,
        "home_clinic_id": request.home_clinic_id,
    }


async def ask(
    session: AsyncSession,
    services: Services,
    *,
    patient: Patient,
    clinic: Clinic,
    actor: str,
    source: str,
) -> ClinicConnectionRequest:
    """Ask ``patient`` (enrolled elsewhere) to connect to ``clinic``: one pending request per
    clinic, one email per request. The caller shows the same neutral answer every time."""
    if clinic.org_id != patient.org_id:
        raise UsageError("a clinic can only ask patients of its own organisation to connect")
    now = services.clock.now()
    home = await patients.current_enrolment(session, patient.id)
    earlier = await session.scalar(
        select(ClinicConnectionRequest)
        .where(
            ClinicConnectionRequest.patient_id == patient.id,
            ClinicConnectionRequest.clinic_id == clinic.id,
        )
        .order_by(ClinicConnectionRequest.created_at.desc())
        .limit(1)
    )
    quiet = earlier is not None and (
        earlier.state == "pending"
        or (
            earlier.state == "declined"
            and earlier.decided_at is not None
            and now - earlier.decided_at < QUIET_AFTER_DECLINE
        )
    )
    if earlier is not None and quiet:
        await audit.record(
            session,
            actor,
            "clinic_connection.repeat",
            "clinic_connection",
            earlier.id,
            at=now,
            **_details(earlier),
        )
        return earlier
    request = ClinicConnectionRequest(
        patient_id=patient.id,
        clinic_id=clinic.id,
        home_clinic_id=home.clinic_id if home else None,
        requested_by=actor[:80],
        source=source,
        state="pending",
        created_at=now,
    )
    session.add(request)
    await session.flush()
    await audit.record(
        session,
        actor,
        "clinic_connection.request",
        "clinic_connection",
        request.id,
        at=now,
        source=source,
        **_details(request),
    )
    await enqueue(
        session,
        services.keyring,
        notice=Notice(kind=Kind.CLINIC_CONNECTION),
        clinic_id=clinic.id,
        recipient=patient.email,
        now=now,
        language=patient.language,
        patient_id=patient.id,
    )
    log.info("connection requested id=%s clinic=%s", request.id, clinic.id)
    return request


async def pending_for(session: AsyncSession, patient_id: str) -> list[PendingConnection]:
    """The patient's open requests, oldest first, with the asking clinic's name."""
    rows = (
        await session.execute(
            select(ClinicConnectionRequest, Clinic.name)
            .join(Clinic, Clinic.id == ClinicConnectionRequest.clinic_id)
            .where(
                ClinicConnectionRequest.patient_id == patient_id,
                ClinicConnectionRequest.state == "pending",
            )
            .order_by(ClinicConnectionRequest.created_at, ClinicConnectionRequest.id)
        )
    ).all()
    return [PendingConnection(r, name) for r, name in rows]


async def decide(
    services: Services, *, patient_id: str, request_id: str, approve: bool
) -> ClinicConnectionRequest:
    """The patient approves (they move to the asking clinic) or declines (nothing moves).

    NotFoundError for a request that is not this patient's or no longer pending (never says
    which)."""
    now = services.clock.now()
    actor = f"patient:{patient_id}"
    async with services.transaction() as s:
        request = await s.get(ClinicConnectionRequest, request_id)
        if request is None or request.patient_id != patient_id or request.state != "pending":
            raise NotFoundError("no such request")
        request.state = "approved" if approve else "declined"
        request.decided_at = now
        if approve:
            patient = await patients.get_patient(s, patient_id)
            clinic = await s.get(Clinic, request.clinic_id)
            if clinic is None:
                raise NotFoundError("no such request")
            await patients.move_to_clinic(s, patient, clinic, source=request.source, actor=actor)
        await audit.record(
            s,
            actor,
            "clinic_connection.approve" if approve else "clinic_connection.decline",
            "clinic_connection",
            request.id,
            at=now,
            **_details(request),
        )
        log.info("connection %s id=%s", request.state, request.id)
        return request

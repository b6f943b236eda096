"""The integration REST API, ``/api/v1``: how an EHR or lab system talks to carebridge.

A FastAPI application of its own, mounted under ``/api/v1`` by ``create_app``, so that its
OpenAPI document (``/api/v1/openapi.json``) describes exactly the API, and its errors are RFC
9457 problem documents without touching the HTML pages' error handling. Bearer API keys carry
a role and optionally an organisation; a key only ever sees its own organisation's patients.
Responses hold ids, states and times only: the API accepts PHI but never echoes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin import apikeys
from gateway.careteam import appointments, threads, workspace
from gateway.models import (
    ApiKey,
    Appointment,
    Clinic,
    Notification,
    Patient,
)
from gateway.portal import patients
from gateway.services import Services
from gateway.web import problems
from gateway.web.deps import services_of
from gateway.web.idempotency import IdempotencyMiddleware, ProblemGuard
from gateway.web.problems import ApiProblem, Problem

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=100)]


def _iso_text(value: Any) -> Any:
    # JSON has no date type: only an ISO string is a date (pydantic would take 0 as 1970).
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 string")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_text)]
IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {problems.MEDIA_TYPE: {}}}
    for code in (400, 401, 403, 404, 409, 422)
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolIn(Strict):
    clinic: str = Field(min_length=1, max_length=64, description="The clinic's slug.")
    given_name: Name
    family_name: Name
    date_of_birth: IsoDate
    email: str = Field(min_length=3, max_length=254)
    language: Literal["en", "es"] = "en"


class EnrolOut(BaseModel):
    patient_id: str | None = Field(
        description="None when the address belongs to a patient of another clinic: that "
        "patient was asked to connect to this clinic, and nothing about them is returned."
    )
    status: str = Field(description="pending, active, or connection_requested")
    created: bool


class MessageIn(Strict):
    body: str = Field(min_length=1, max_length=threads.MAX_BODY_CHARS)
    subject: str | None = Field(default=None, min_length=1, max_length=threads.MAX_SUBJECT_CHARS)
    thread_id: str | None = Field(default=None, max_length=64)


class MessageOut(BaseModel):
    thread_id: str
    message_id: str


class ResultIn(Strict):
    kind: Literal["lab", "imaging", "test"] = "lab"
    title: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    sensitive: StrictBool = False
    release: StrictBool = Field(
        default=True, description="False holds the result until a clinician releases it."
    )
    collected_at: IsoDateTime | None = None


class ResultOut(BaseModel):
    result_id: str
    released: bool


class AppointmentIn(Strict):
    patient_id: str = Field(min_length=1, max_length=64)
    starts_at: IsoDateTime
    external_id: str | None = Field(default=None, min_length=1, max_length=64)


class AppointmentOut(BaseModel):
    appointment_id: str
    starts_at: AwareDatetime
    cancelled: bool


class NotificationOut(BaseModel):
    id: str
    kind: str
    state: str
    attempts: int
    created_at: AwareDatetime
    sent_at: AwareDatetime | None


class DeliverabilityOut(BaseModel):
    patient_id: str
    status: str
    deliverability: str
    notifications: list[NotificationOut]


class QueueOut(BaseModel):
    clinic: str
    pool_id: str
    pool: str
    open: int
    urgent: int
    unassigned: int
    breached: int
    next_due_at: AwareDatetime | None


class ApiKeyOut(BaseModel):
    id: str
    name: str
    role: str
    prefix: str
    revoked: bool


bearer = HTTPBearer(auto_error=False)


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed if the route succeeds, rolled back if not."""
    async with services_of(request).transaction() as s:
        yield s


Session = Annotated[AsyncSession, Depends(_session)]


async def _caller(
    request: Request,
    s: Session,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    now = services_of(request).clock.now()
    key = await apikeys.authenticate(s, creds.credentials, now) if creds else None
    if key is None:
        raise ApiProblem(
            401,
            "unauthenticated",
            "send a valid API key: Authorization: Bearer cbk_...",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


Caller = Annotated[ApiKey, Depends(_caller)]


def create_api(services: Services) -> FastAPI:
    api = FastAPI(
        title="carebridge integration API",
        version="1.0.0",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        responses=ERRORS,
    )
    api.state.services = services
    problems.install(api)
    api.add_middleware(IdempotencyMiddleware, services=services)
    api.add_middleware(ProblemGuard)

    def actor(key: ApiKey) -> str:
        return f"apikey:{key.id}"

    async def patient_for(s: AsyncSession, key: ApiKey, patient_id: str) -> Patient:
        patient = await s.get(Patient, patient_id)
        if patient is None or (key.org_id is not None and patient.org_id != key.org_id):
            raise ApiProblem(404, "not-found", "no such patient")
        return patient

    async def home_clinic(s: AsyncSession, patient: Patient) -> Clinic:
        enrolment = await patients.current_enrolment(s, patient.id)
        clinic = await s.get(Clinic, enrolment.clinic_id) if enrolment else None
        if clinic is None:
            raise ApiProblem(409, "not-enrolled", "the patient is not enrolled at any clinic")
        return clinic

    @api.post(
        "/patients",
        status_code=201,
        response_model=EnrolOut,
        tags=["patients"],
        responses={202: {"model": EnrolOut, "description": "Asked to connect; nothing moved."}},
    )
    async def enrol(body: EnrolIn, s: Session, key: Caller, response: Response) -> EnrolOut:
        """Enrol a patient at a clinic and send the registration invitation.

        An address that belongs to a patient of another clinic is not enrolled: the patient
        is asked (by a PHI-free email) to approve this clinic in the portal, and the answer is
        202 with no patient id, whatever name and date of birth were sent."""
        from gateway.portal.enrolment import desk_enrol

        clinic = await s.scalar(select(Clinic).where(Clinic.slug == body.clinic))
        if clinic is None or (key.org_id is not None and clinic.org_id != key.org_id):
            raise ApiProblem(404, "not-found", "no such clinic")
        result = await desk_enrol(
            s,
            services,
            clinic=clinic,
            given_name=body.given_name,
            family_name=body.family_name,
            date_of_birth=body.date_of_birth,
            email=body.email,
            language=body.language,
            actor=actor(key),
            source="api",
        )
        if result.patient is None:
            response.status_code = 202
            return EnrolOut(patient_id=None, status="connection_requested", created=False)
        return EnrolOut(
            patient_id=result.patient.id, status=result.patient.status, created=result.created
        )

    @api.post(
        "/patients/{patient_id}/messages",
        status_code=201,
        response_model=MessageOut,
        tags=["messages"],
    )
    async def provider_message(
        patient_id: Id, body: MessageIn, s: Session, key: Caller
    ) -> MessageOut:
        """Post a provider's message to the patient (a new thread, or into ``thread_id``)."""
        patient = await patient_for(s, key, patient_id)
        clinic = await home_clinic(s, patient)
        thread = None
        if body.thread_id:
            thread = await threads.thread_for_patient(s, body.thread_id, patient.id)
            if thread is None:
                raise ApiProblem(404, "not-found", "no such thread for this patient")
        elif body.subject is None:
            raise ApiProblem(422, "invalid", "a new thread needs a subject")
        message = await threads.post_clinic_message(
            s,
            services,
            patient=patient,
            clinic=clinic,
            body=body.body,
            subject=body.subject,
            thread=thread,
            author_id=key.id,
            actor=actor(key),
        )
        return MessageOut(thread_id=message.thread_id, message_id=message.id)

    @api.post(
        "/patients/{patient_id}/results",
        status_code=201,
        response_model=ResultOut,
        tags=["results"],
    )
    async def post_result(patient_id: Id, body: ResultIn, s: Session, key: Caller) -> ResultOut:
        """Post a result; ``release: false`` (or a sensitive result) holds it for a clinician."""
        from gateway.portal.results import add_result

        patient = await patient_for(s, key, patient_id)
        clinic = await home_clinic(s, patient)
        result = await add_result(
            s,
            services,
            patient=patient,
            clinic=clinic,
            kind=body.kind,
            title=body.title,
            data=body.data,
            sensitive=body.sensitive,
            release=body.release,
            collected_at=body.collected_at,
            source="integration",
            actor=actor(key),
        )
        return ResultOut(result_id=result.id, released=result.released_at is not None)

    def appointment_out(appt: Appointment) -> AppointmentOut:
        return AppointmentOut(
            appointment_id=appt.id,
            starts_at=appt.starts_at,
            cancelled=appt.cancelled_at is not None,
        )

    @api.post(
        "/appointments", status_code=201, response_model=AppointmentOut, tags=["appointments"]
    )
    async def schedule(body: AppointmentIn, s: Session, key: Caller) -> AppointmentOut:
        """Schedule reminders (48 h and 2 h before) for an appointment."""
        patient = await patient_for(s, key, body.patient_id)
        clinic = await home_clinic(s, patient)
        appt = await appointments.schedule(
            s,
            services,
            clinic=clinic,
            patient=patient,
            starts_at=body.starts_at,
            external_id=body.external_id,
            actor=actor(key),
        )
        return appointment_out(appt)

    @api.post(
        "/appointments/{appointment_id}/cancel",
        response_model=AppointmentOut,
        tags=["appointments"],
    )
    async def cancel(appointment_id: Id, s: Session, key: Caller) -> AppointmentOut:
        """Cancel an appointment: reminders not yet sent never will be."""
        appt = await s.get(Appointment, appointment_id)
        if appt is not None:
            await patient_for(s, key, appt.patient_id)
        if appt is None:
            raise ApiProblem(404, "not-found", "no such appointment")
        appt = await appointments.cancel(s, services, appointment_id=appt.id, actor=actor(key))
        return appointment_out(appt)

    @api.get(
        "/patients/{patient_id}/notifications",
        response_model=DeliverabilityOut,
        tags=["patients"],
    )
    async def notification_state(
        patient_id: Id,
        s: Session,
        key: Caller,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> DeliverabilityOut:
        """The patient's deliverability and their latest notifications' delivery states."""
        patient = await patient_for(s, key, patient_id)
        rows = (
            await s.scalars(
                select(Notification)
                .where(Notification.patient_id == patient.id)
                .order_by(Notification.created_at.desc())
                .limit(limit)
            )
        ).all()
        return DeliverabilityOut(
            patient_id=patient.id,
            status=patient.status,
            deliverability=patient.deliverability,
            notifications=[
                NotificationOut(
                    id=n.id,
                    kind=n.kind,
                    state=n.state,
                    attempts=n.attempts,
                    created_at=n.created_at,
                    sent_at=n.sent_at,
                )
                for n in rows
            ],
        )

    @api.get("/queues", response_model=list[QueueOut], tags=["queues"])
    async def queues(s: Session, key: Caller) -> list[QueueOut]:
        """Each pool's open work: counts and the nearest deadline."""
        loads = await workspace.pool_workloads(s, services.clock.now(), org_id=key.org_id)
        return [
            QueueOut(
                clinic=w.clinic_slug,
                pool_id=w.pool.id,
                pool=w.pool.name,
                open=w.open,
                urgent=w.urgent,
                unassigned=w.unassigned,
                breached=w.breached,
                next_due_at=_utc(w.next_due_at),
            )
            for w in loads
        ]

    @api.get("/api-keys", response_model=list[ApiKeyOut], tags=["admin"])
    async def list_keys(s: Session, key: Caller) -> list[ApiKeyOut]:
        """Admin keys only: every API key (never its value)."""
        if key.role != "admin":
            raise ApiProblem(403, "forbidden", "this needs an admin API key")
        return [
            ApiKeyOut(
                id=k.id, name=k.name, role=k.role, prefix=k.prefix, revoked=k.revoked_at is not None
            )
            for k in await apikeys.list_keys(s)
        ]

    return api


def _utc(value: Any) -> Any:
    """``min()`` over a UTC column comes back naive on SQLite."""
    from datetime import UTC, datetime

    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value

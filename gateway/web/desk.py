"""The front desk's pages: enrol a patient after checking their ID, and see who is pending.

Enrolling here is the same as ``carebridge patient enroll`` or the REST API: it goes through
:func:`gateway.portal.enrolment.desk_enrol`, which queues the registration email. An address
that belongs to a patient of another clinic gets one neutral page ("we asked them to connect")
and never that patient's name, id or details. Every page about a patient answers 404 unless the
patient is currently enrolled at the desk's own clinic. The pending
list tells the desk why an account cannot be used yet (email not confirmed, terms not agreed)
so they can help the patient at the counter or send the invitation again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from gateway.errors import CarebridgeError, NotFoundError
from gateway.models import Clinic, Patient, Staff
from gateway.portal import enrolment, invitations, library, patients
from gateway.portal.accounts import Principal
from gateway.web import sessions
from gateway.web.deps import services_of
from gateway.web.pages import render

router = APIRouter(include_in_schema=False)
CSRF = [Depends(sessions.check_csrf)]
DESK_ROLES = ("front_desk", "clinic_admin", "nurse", "provider")
Desk = Depends(sessions.require_staff(*DESK_ROLES))
FIELDS = ("given_name", "family_name", "date_of_birth", "email", "language")


async def _clinic(request: Request, principal: Principal) -> Clinic | None:
    if principal.clinic_id is None:
        return None
    async with services_of(request).sessions() as s:
        return await s.get(Clinic, principal.clinic_id)


def _page(request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    base: dict[str, Any] = {"error": None, "values": {}, "enrolled": None}
    base.update(ctx)
    return render(request, "portal/desk-enrol.html.j2", status_code=status, **base)


@router.get("/staff/desk/enrol")
async def enrol_form(request: Request, principal: Principal = Desk) -> HTMLResponse:
    return _page(request, clinic=await _clinic(request, principal))


@router.post("/staff/desk/enrol", dependencies=CSRF)
async def enrol(request: Request, principal: Principal = Desk) -> Response:
    clinic = await _clinic(request, principal)
    form = await request.form()
    values = {k: str(form.get(k) or "").strip() for k in FIELDS}
    if clinic is None:
        return _page(request, 400, clinic=None, error="no clinic", values=values)
    if form.get("id_checked") != "yes":
        return _page(request, 400, clinic=clinic, error="id", values=values)
    services = services_of(request)
    try:
        dob = enrolment.parse_dob(values["date_of_birth"])
        async with services.transaction() as s:
            result = await enrolment.desk_enrol(
                s,
                services,
                clinic=clinic,
                given_name=values["given_name"],
                family_name=values["family_name"],
                date_of_birth=dob,
                email=values["email"],
                language=values["language"] or "en",
                actor=principal.actor,
            )
    except enrolment.EnrolRefused:
        return _page(request, 400, clinic=clinic, error="dob", values=values)
    except CarebridgeError as exc:
        # Messages from validation name the rule, never the value typed.
        return _page(request, 400, clinic=clinic, error=str(exc), values=values)
    if result.patient is None:
        # Someone else's patient: one neutral page, no name, no id, nothing echoed back.
        return render(request, "portal/desk-connection.html.j2")
    return RedirectResponse(f"/staff/desk/patients/{result.patient.id}", status_code=303)


@router.get("/staff/desk/patients/{patient_id}")
async def patient_status(
    request: Request, patient_id: str, principal: Principal = Desk
) -> HTMLResponse:
    services = services_of(request)
    async with services.sessions() as s:
        patient = await s.get(Patient, patient_id)
        enrolment_row = await patients.current_enrolment(s, patient_id) if patient else None
    if (
        patient is None
        or enrolment_row is None
        or (principal.role != "operator" and enrolment_row.clinic_id != principal.clinic_id)
    ):
        return render(request, "portal/not-found.html.j2", status_code=404)
    articles = await library.search(services, language=patient.language)
    assigned = await library.assigned_to(services, patient.id, patient.language)
    if principal.role != "operator":
        # What another clinic suggested (before a move) is that clinic's business.
        async with services.sessions() as s:
            ours = {
                f"staff:{i}"
                for i in await s.scalars(
                    select(Staff.id).where(Staff.clinic_id == principal.clinic_id)
                )
            }
        assigned = [a for a in assigned if a.assignment.assigned_by in ours]
    return render(
        request,
        "portal/desk-patient.html.j2",
        patient=patient,
        reasons=patients.pending_reasons(patient),
        articles=articles,
        assigned=assigned,
    )


@router.post("/staff/desk/patients/{patient_id}/articles", dependencies=CSRF)
async def assign_article(
    request: Request, patient_id: str, principal: Principal = Desk
) -> Response:
    """A clinician suggests a library article; it shows in the patient's inbox and library."""
    services = services_of(request)
    form = await request.form()
    slug, note = str(form.get("slug") or ""), str(form.get("note") or "").strip()
    async with services.transaction() as s:
        row = await patients.current_enrolment(s, patient_id)
        if row is None or (principal.role != "operator" and row.clinic_id != principal.clinic_id):
            return render(request, "portal/not-found.html.j2", status_code=404)
        try:
            await library.assign(
                s,
                services,
                patient_id=patient_id,
                slug=slug,
                actor=principal.actor,
                note=note[:1000] or None,
            )
        except NotFoundError:
            return render(request, "portal/not-found.html.j2", status_code=404)
    return RedirectResponse(f"/staff/desk/patients/{patient_id}", status_code=303)


@router.post("/staff/desk/patients/{patient_id}/invite", dependencies=CSRF)
async def reinvite(request: Request, patient_id: str, principal: Principal = Desk) -> Response:
    services = services_of(request)
    async with services.transaction() as s:
        patient = await s.get(Patient, patient_id)
        row = await patients.current_enrolment(s, patient_id) if patient else None
        clinic = await s.get(Clinic, row.clinic_id) if row else None
        if patient is None or clinic is None or clinic.id != principal.clinic_id:
            return render(request, "portal/not-found.html.j2", status_code=404)
        if patients.pending_reasons(patient):
            await invitations.invite(s, services, patient=patient, clinic=clinic)
    return RedirectResponse(f"/staff/desk/patients/{patient_id}", status_code=303)


@router.get("/staff/desk/pending")
async def pending(request: Request, principal: Principal = Desk) -> HTMLResponse:
    clinic = await _clinic(request, principal)
    rows = []
    if clinic is not None:
        async with services_of(request).sessions() as s:
            rows = await enrolment.pending_at(s, clinic)
    return render(request, "portal/desk-pending.html.j2", clinic=clinic, rows=rows)

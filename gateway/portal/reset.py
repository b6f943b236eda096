"""Forgotten passwords, for patients and staff alike: an emailed single-use link.

Asking always gets the same answer, after the same time (see the web layer), whether or not
the address has an account; requests are rate-limited per address. The link (``/reset/``,
minted at render time by the outbound renderer, one hour, single use) shows a form on GET and
changes nothing; the POST sets the new password, revokes any other reset link and ends every
session of the account, so a thief who had the old password is signed out.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit, throttle, tokens
from gateway.addresses import index_form
from gateway.careteam.staff import find_staff_by_email
from gateway.errors import InvalidAddressError
from gateway.models import Patient, Staff, WebSession
from gateway.outbound.notify import Kind, Notice, enqueue
from gateway.passwords import hash_password
from gateway.portal import patients
from gateway.portal.signup import FormProblem, password_problem
from gateway.services import Services

KINDS = ("patient", "staff")


async def request_reset(services: Services, email: str, kind: str = "patient") -> None:
    """Queue a reset email if a usable account has this address; silent otherwise."""
    now = services.clock.now()
    try:
        normal = index_form(email.strip())
    except InvalidAddressError:
        return
    key = services.keyring.blind_index(f"{kind}:{normal}", "reset")
    async with services.transaction() as s:
        if await throttle.hit(s, throttle.RESET, key, now) is not None:
            return
        if kind == "staff":
            await _queue_staff(s, services, normal)
        else:
            await _queue_patients(s, services, normal)


async def _queue_patients(s: AsyncSession, services: Services, address: str) -> None:
    now = services.clock.now()
    idx = patients.email_index(services.keyring, address)
    found = (
        await s.scalars(
            select(Patient).where(Patient.email_index == idx, Patient.password_hash != "")
        )
    ).all()
    for patient in found:
        enrolment = await patients.current_enrolment(s, patient.id)
        if enrolment is None or patient.status == "disabled":
            continue
        await enqueue(
            s,
            services.keyring,
            notice=Notice(kind=Kind.PASSWORD_RESET),
            clinic_id=enrolment.clinic_id,
            recipient=patient.email,
            now=now,
            language=patient.language,
            patient_id=patient.id,
        )
        await audit.record(s, "anonymous", "patient.reset_requested", "patient", patient.id, at=now)


async def _queue_staff(s: AsyncSession, services: Services, address: str) -> None:
    member = await find_staff_by_email(s, services.keyring, address)
    # Operators belong to no clinic, so there is no sending domain for them: an operator
    # resets through another operator ('carebridge staff' commands) instead.
    if member is None or not member.active or member.clinic_id is None:
        return
    now = services.clock.now()
    await enqueue(
        s,
        services.keyring,
        notice=Notice(kind=Kind.PASSWORD_RESET),
        clinic_id=member.clinic_id,
        recipient=member.email,
        now=now,
        language=str((member.preferences or {}).get("language", "en")),
        staff_id=member.id,
    )
    await audit.record(s, "anonymous", "staff.reset_requested", "staff", member.id, at=now)


@dataclass(frozen=True)
class ResetTarget:
    kind: str  # patient or staff
    account: Patient | Staff
    language: str


async def link_target(session: AsyncSession, services: Services, value: str) -> ResetTarget | None:
    """Whose password this link resets, or None. Never consumes anything."""
    row = await tokens.peek(session, value, "password_reset", services.clock.now())
    if row is None or row.subject_kind not in KINDS:
        return None
    if row.subject_kind == "patient":
        patient = await session.get(Patient, row.subject_id)
        return ResetTarget("patient", patient, patient.language) if patient else None
    member = await session.get(Staff, row.subject_id)
    if member is None or not member.active:
        return None
    return ResetTarget("staff", member, str((member.preferences or {}).get("language", "en")))


def _inputs(account: Patient | Staff) -> list[str]:
    local = account.email.rpartition("@")[0]
    if isinstance(account, Patient):
        return [account.given_name, account.family_name, local]
    return [account.name, local]


async def complete_reset(services: Services, value: str, password: str, confirm: str) -> str:
    """Set the new password; return the account kind ("patient" or "staff")."""
    now = services.clock.now()
    async with services.sessions() as s:
        target = await link_target(s, services, value)
        if target is None:
            raise FormProblem("token", "invalid")
        inputs = _inputs(target.account)
    problem = await services.executors.passwords.run(password_problem, password, confirm, inputs)
    if problem is not None:
        raise problem
    hashed = await services.executors.passwords.run(hash_password, password)
    async with services.transaction() as s:
        target = await link_target(s, services, value)
        if target is None:
            raise FormProblem("token", "invalid")
        account, kind = target.account, target.kind
        await tokens.consume(s, value, "password_reset", now)
        await tokens.revoke_for_subject(s, kind, account.id, "password_reset", now)
        account.password_hash = hashed
        account.failed_logins, account.locked_until = 0, None
        await s.execute(
            delete(WebSession).where(
                WebSession.principal_kind == kind, WebSession.principal_id == account.id
            )
        )
        await audit.record(
            s, f"{kind}:{account.id}", f"{kind}.password_reset", kind, account.id, at=now
        )
        return kind

"""Staff accounts (care team, front desk, clinic admins, operators)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.addresses import index_form, validate_address
from gateway.careteam import pools
from gateway.crypto import KeyRing
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, Staff
from gateway.models.org import STAFF_ROLES
from gateway.passwords import hash_password


async def add_staff(
    session: AsyncSession,
    keyring: KeyRing,
    *,
    clinic: Clinic | None,
    name: str,
    email: str,
    role: str,
    password: str | None,
    actor: str,
) -> Staff:
    if role not in STAFF_ROLES:
        raise UsageError(f"role {role!r} is unknown; use one of: {', '.join(STAFF_ROLES)}")
    if clinic is None and role != "operator":
        raise UsageError("only operators may be added without --clinic")
    address = validate_address(email)
    idx = keyring.blind_index(index_form(address), "staff-email")
    if await session.scalar(select(Staff.id).where(Staff.email_index == idx)):
        raise UsageError("a staff account with that email address already exists")
    member = Staff(
        clinic_id=clinic.id if clinic else None,
        name=name,
        email=address,
        email_index=idx,
        role=role,
        password_hash=hash_password(password) if password else "",
        preferences={},
    )
    session.add(member)
    await session.flush()
    await audit.record(session, actor, "staff.create", "staff", member.id, role=role)
    # A clinic's first staff member watches every pool nobody watches yet.
    await pools.fill_empty_pools(session, member, actor=actor)
    return member


async def find_staff_by_email(session: AsyncSession, keyring: KeyRing, email: str) -> Staff | None:
    idx = keyring.blind_index(index_form(email), "staff-email")
    return await session.scalar(select(Staff).where(Staff.email_index == idx))


async def get_staff(session: AsyncSession, staff_id: str) -> Staff:
    member = await session.get(Staff, staff_id)
    if member is None:
        raise NotFoundError(f"no staff member {staff_id!r}")
    return member


async def list_staff(session: AsyncSession, clinic: Clinic | None = None) -> Sequence[Staff]:
    q = select(Staff).order_by(Staff.created_at)
    if clinic is not None:
        q = q.where(Staff.clinic_id == clinic.id)
    return (await session.scalars(q)).all()

"""Organisations and clinics: create, find and list."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, Organisation, Pool, RoutingRule

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

DEFAULT_HOURS: dict[str, Any] = {
    day: ["08:00", "17:00"] for day in ("mon", "tue", "wed", "thu", "fri")
}

# The pools a new clinic starts with, and which request type each receives.
DEFAULT_POOLS = (
    ("appointments", "Appointments", ("appointment",)),
    ("refills", "Refills", ("medication_renewal",)),
    ("records", "Records", ("immunization_record",)),
    ("care-team", "Care team", ("question",)),
)


# An urgent request's reply deadline, in business minutes (Clinic.urgent_sla_minutes).
DEFAULT_URGENT_SLA_MINUTES = 60
MAX_URGENT_SLA_MINUTES = 24 * 60


def check_urgent_sla(minutes: int) -> int:
    if not 5 <= minutes <= MAX_URGENT_SLA_MINUTES:
        raise UsageError(
            f"the urgent reply deadline must be 5 to {MAX_URGENT_SLA_MINUTES} business minutes"
        )
    return minutes


async def set_urgent_sla(
    session: AsyncSession, clinic: Clinic, *, minutes: int, actor: str
) -> None:
    clinic.urgent_sla_minutes = check_urgent_sla(minutes)
    await session.flush()
    await audit.record(session, actor, "clinic.urgent_sla", "clinic", clinic.id, minutes=minutes)


def check_slug(slug: str, what: str) -> str:
    if not _SLUG.match(slug):
        raise UsageError(
            f"{what} {slug!r} is not valid: use lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return slug


async def get_or_create_org(
    session: AsyncSession, slug: str, name: str, actor: str
) -> Organisation:
    check_slug(slug, "organisation")
    org = await session.scalar(select(Organisation).where(Organisation.slug == slug))
    if org is None:
        org = Organisation(slug=slug, name=name)
        session.add(org)
        await session.flush()
        await audit.record(session, actor, "org.create", "organisation", org.id)
    return org


async def add_clinic(
    session: AsyncSession,
    *,
    org: Organisation,
    slug: str,
    name: str,
    timezone: str = "UTC",
    reply_domain: str = "",
    sending_domain: str = "",
    urgent_sla_minutes: int = DEFAULT_URGENT_SLA_MINUTES,
    actor: str,
) -> Clinic:
    """Create a clinic with its default pools and routing rules.

    The pools start empty: the clinic's first staff member is put into every pool nobody
    watches when they are added (:func:`gateway.careteam.pools.fill_empty_pools`), and until
    then the fallback recipient rule covers them (there is nobody to tell before any staff)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    check_slug(slug, "clinic")
    check_urgent_sla(urgent_sla_minutes)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"timezone {timezone!r} is unknown; use an IANA name such as America/Chicago"
        ) from None
    if await session.scalar(select(Clinic.id).where(Clinic.slug == slug)):
        raise UsageError(f"clinic {slug!r} already exists; choose another slug")
    clinic = Clinic(
        org_id=org.id,
        slug=slug,
        name=name,
        timezone=timezone,
        business_hours=dict(DEFAULT_HOURS),
        holidays=[],
        branding={},
        urgent_terms=[],
        urgent_sla_minutes=urgent_sla_minutes,
        enrolment_code=secrets.token_hex(4).upper(),
        reply_domain=reply_domain.lower(),
        sending_domain=(sending_domain or reply_domain).lower(),
    )
    session.add(clinic)
    await session.flush()
    position = 0
    for pool_slug, pool_name, request_types in DEFAULT_POOLS:
        pool = Pool(clinic_id=clinic.id, slug=pool_slug, name=pool_name)
        session.add(pool)
        await session.flush()
        for rt in request_types:
            position += 1
            session.add(
                RoutingRule(
                    clinic_id=clinic.id, position=position, request_type=rt, pool_id=pool.id
                )
            )
    await audit.record(session, actor, "clinic.create", "clinic", clinic.id)
    return clinic


async def get_clinic(session: AsyncSession, slug: str) -> Clinic:
    clinic = await session.scalar(select(Clinic).where(Clinic.slug == slug))
    if clinic is None:
        raise NotFoundError(f"no clinic {slug!r}; see 'carebridge clinic list'")
    return clinic


async def list_clinics(session: AsyncSession) -> Sequence[Clinic]:
    return (await session.scalars(select(Clinic).order_by(Clinic.slug))).all()


async def clinic_by_reply_domain(session: AsyncSession, domain: str) -> Clinic | None:
    return await session.scalar(select(Clinic).where(Clinic.reply_domain == domain.lower()))

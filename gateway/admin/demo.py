"""Demo data so a new user sees carebridge work: one organisation, clinic, staff and patient.

Idempotent: running it again finds what it made before. Demo passwords are printed once.
"""

from __future__ import annotations

import secrets
from datetime import date
from pathlib import Path

from sqlalchemy import select

from gateway.admin import clinics
from gateway.careteam import pools, staff
from gateway.errors import CarebridgeError
from gateway.models import Clinic
from gateway.outbound import dkim
from gateway.portal import invitations, patients
from gateway.services import Services

DEMO_CLINIC = "riverside"


class EmailNotWritten(CarebridgeError):
    """The registration email is not where the demo would say it is; ``seeded`` is what was
    made before (shown anyway: the demo password is printed only once)."""

    def __init__(self, path: Path, seeded: list[str] | None = None) -> None:
        self.path = path
        self.seeded = seeded or []
        super().__init__(
            f"the registration email was not written to {path}: its delivery failed "
            "(see the log above and 'carebridge queue status')"
        )


async def seed(services: Services) -> list[str]:
    """Create the demo records if missing; return lines to show the user."""
    lines: list[str] = []
    async with services.transaction() as s:
        existing = await s.scalar(select(Clinic).where(Clinic.slug == DEMO_CLINIC))
        if existing is not None:
            return [f"demo clinic '{DEMO_CLINIC}' already seeded"]
        org = await clinics.get_or_create_org(s, "demo-health", "Demo Health", "demo")
        clinic = await clinics.add_clinic(
            s,
            org=org,
            slug=DEMO_CLINIC,
            name="Riverside Family Clinic",
            timezone="America/Chicago",
            reply_domain="reply.riverside.example",
            sending_domain="riverside.example",
            actor="demo",
        )
        password = secrets.token_urlsafe(10)
        team = []
        for name, email, role in (
            ("Dana Admin", "admin@riverside.example", "clinic_admin"),
            ("Dr. Rivera", "rivera@riverside.example", "provider"),
            ("Front Desk", "desk@riverside.example", "front_desk"),
        ):
            team.append(
                await staff.add_staff(
                    s,
                    services.keyring,
                    clinic=clinic,
                    name=name,
                    email=email,
                    role=role,
                    password=password,
                    actor="demo",
                )
            )
        # The whole demo team watches every pool: a demo request always reaches someone.
        for pool in await pools.pools_of(s, clinic.id):
            for member in team:
                await pools.add_member(s, pool=pool, staff_id=member.id, actor="demo")
        result = await patients.enroll(
            s,
            services.keyring,
            clinic=clinic,
            given_name="Alex",
            family_name="Demo",
            date_of_birth=date(1985, 6, 15),
            email="alex.demo@example.org",
            source="demo",
            actor="demo",
        )
        # Keys before the first email, as 'carebridge domain add' would make them.
        await dkim.ensure_domain_keys(s, clinic, now=services.clock.now())
        invitation = await invitations.invite(s, services, patient=result.patient, clinic=clinic)
        lines += [
            f"seeded clinic '{DEMO_CLINIC}' (enrolment code {clinic.enrolment_code})",
            "staff sign-in: admin@riverside.example, rivera@riverside.example, "
            f"desk@riverside.example, password {password}",
            f"demo patient {result.patient.id} enrolled",
        ]
    try:
        lines += await _deliver_now(services, invitation.id)
    except EmailNotWritten as exc:
        raise EmailNotWritten(exc.path, lines) from None
    return lines


async def _deliver_now(services: Services, notification_id: str) -> list[str]:
    """With [delivery] maildir set, write the invitation now so it can be opened at once."""
    directory = services.config.delivery.maildir
    if not directory:
        return [f"registration email queued (notification {notification_id})"]
    from gateway.outbound.delivery import DeliveryPart

    part = DeliveryPart(services)
    try:
        while await part.run_once("demo"):
            pass
    finally:
        await part.transport.close()
    path = services.config.path(directory) / f"{notification_id}.eml"
    if not path.is_file():
        # Said outright: a demo that claims an email it never wrote sends the user hunting.
        raise EmailNotWritten(path)
    return [f"registration email written to {path} (open it to finish registering)"]

"""The people, places and time a story needs: a clock tests move by hand, and factories for
clinics, staff, patients and threads (the ``clock`` and ``world`` fixtures hand them out)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.admin import clinics
from gateway.careteam import staff, threads
from gateway.models import Clinic, Patient, Staff, Thread
from gateway.portal import patients
from gateway.services import Services


class FakeClock:
    """A clock tests move by hand (SLA, expiry, backoff)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 3, 2, 15, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, **kwargs: float) -> None:
        self.current += timedelta(**kwargs)

    def set(self, when: datetime) -> None:
        self.current = when


@dataclass
class World:
    """Factories for the people and places a story needs."""

    services: Services

    async def clinic(self, slug: str | None = None, **kw: Any) -> Clinic:
        slug = slug or f"clinic-{secrets.token_hex(3)}"
        kw.setdefault("name", "Riverside Family Clinic")
        kw.setdefault("reply_domain", f"reply.{slug}.example")
        kw.setdefault("sending_domain", f"{slug}.example")
        kw.setdefault("timezone", "America/Chicago")
        async with self.services.transaction() as s:
            org = await clinics.get_or_create_org(s, kw.pop("org", "test-org"), "Test Org", "test")
            return await clinics.add_clinic(s, org=org, slug=slug, actor="test", **kw)

    async def staff(self, clinic: Clinic | None, role: str = "nurse", **kw: Any) -> Staff:
        kw.setdefault("name", "Nurse Jackie")
        kw.setdefault("email", f"staff-{secrets.token_hex(3)}@clinic.example")
        kw.setdefault("password", "correct horse battery staple 42")
        async with self.services.transaction() as s:
            return await staff.add_staff(
                s, self.services.keyring, clinic=clinic, role=role, actor="test", **kw
            )

    async def patient(self, clinic: Clinic, **kw: Any) -> Patient:
        kw.setdefault("given_name", "Pat")
        kw.setdefault("family_name", "Example")
        kw.setdefault("date_of_birth", date(1980, 4, 23))
        kw.setdefault("email", f"pat-{secrets.token_hex(3)}@example.org")
        kw.setdefault("source", "desk")
        async with self.services.transaction() as s:
            result = await patients.enroll(
                s, self.services.keyring, clinic=clinic, actor="test", **kw
            )
            return result.patient

    async def thread(
        self, clinic: Clinic | None = None, patient: Patient | None = None, **kw: Any
    ) -> Thread:
        """A request the patient opened, through ``threads.create_thread`` (routing, SLA clock,
        notifications and all). Without a patient, one is enrolled (at a new clinic unless one
        is given); without a clinic, the patient's. Both are read afresh from the store, so
        settings changed since they were made count."""
        if patient is None:
            clinic = clinic or await self.clinic()
            patient = await self.patient(clinic)
        clinic_id = clinic.id if clinic is not None else patient.clinic_id
        kw.setdefault("request_type", "question")
        kw.setdefault("subject", "A question")
        kw.setdefault("body", "Is my prescription ready?")
        kw.setdefault("actor", "test")
        async with self.services.transaction() as s:
            c = await s.get(Clinic, clinic_id)
            p = await s.get(Patient, patient.id)
            assert c is not None and p is not None
            return await threads.create_thread(s, self.services, clinic=c, patient=p, **kw)

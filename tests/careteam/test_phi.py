"""No PHI leaves the store from the care-team side: a whole story (request, reminders, SLA
escalation, staff answer, API calls) with canaries in every PHI field, then the logs, the
queued notifications, the API's answers and the SQLite file's bytes are searched for them."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from gateway.admin import apikeys
from gateway.careteam import appointments, escalation, threads
from gateway.models import Notification
from gateway.services import Services
from gateway.web.app import create_app
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.world import FakeClock, World

CANARIES = (CANARY_GIVEN, CANARY_FAMILY, CANARY_TEXT, CANARY_EMAIL)


async def test_story_leaks_no_phi(
    services: Services,
    world: World,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    backend: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    clinic = await world.clinic()
    patient = await world.patient(
        clinic, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email=CANARY_EMAIL
    )
    nurse = await world.staff(clinic, role="clinic_admin")
    t = await world.thread(
        clinic,
        patient,
        request_type="medication_renewal",
        subject=CANARY_TEXT,
        body=CANARY_TEXT,
        details={"medication": CANARY_TEXT},
        urgent=True,
    )
    async with services.transaction() as s:
        await appointments.schedule(
            s,
            services,
            clinic=clinic,
            patient=patient,
            starts_at=clock.now() + timedelta(hours=1),
            actor="test",
        )
    await appointments.send_due_reminders(services)
    clock.advance(days=3)
    assert (await escalation.run_sla_timers(services)).breached == 1
    async with services.transaction() as s:
        fresh = await threads.thread_for_patient(s, t.id, patient.id)
        assert fresh is not None
        await threads.post_staff_message(s, services, thread=fresh, staff=nurse, body=CANARY_TEXT)
        key = await apikeys.create(
            s, name="k", role="integration", org_slug=None, now=clock.now(), actor="t"
        )
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://t/api/v1",
        headers={"Authorization": f"Bearer {key.value}"},
    ) as api:
        answers = [
            await api.post(
                f"/patients/{patient.id}/messages",
                json={"subject": CANARY_TEXT, "body": CANARY_TEXT},
            ),
            await api.get(f"/patients/{patient.id}/notifications"),
            await api.post(
                f"/patients/{patient.id}/results",
                json={"title": CANARY_TEXT, "data": {"v": CANARY_TEXT}, "kind": CANARY_TEXT},
            ),
            await api.post(
                "/appointments", json={"patient_id": patient.id, "starts_at": CANARY_TEXT}
            ),
            await api.get("/queues"),
        ]
    for r in answers:
        for canary in CANARIES:
            assert canary not in r.text, (r.request.url.path, canary)
    for canary in CANARIES:
        assert canary not in caplog.text, canary
    async with services.sessions() as s:
        rows = list(await s.scalars(select(Notification)))
    assert len(rows) >= 5
    for row in rows:
        for canary in CANARIES:
            assert canary not in str(row.context)
    if backend == "sqlite":
        path = Path(services.config.store.url.split("///", 1)[1])
        raw = b"".join(
            p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
        for canary in CANARIES:
            assert canary.encode() not in raw, canary

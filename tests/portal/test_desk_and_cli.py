"""Staff side of the portal: suggesting library articles (desk page and CLI), appointment
reminders in the patient's inbox, and the security headers on every portal page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from gateway.careteam import appointments
from gateway.models import ArticleAssignment, AuditEvent, Clinic, Patient
from gateway.services import Services
from tests.portal.helpers import active_patient, csrf_of, patient_sign_in
from tests.support.canaries import CANARY_TEXT
from tests.support.world import World

ROOT = Path(__file__).resolve().parents[2]


async def staff_sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/staff/login")
    r = await client.post(
        "/staff/login",
        data={
            "csrf_token": csrf_of(page.text),
            "email": email,
            "password": "correct horse battery staple 42",
        },
    )
    assert r.status_code == 303


async def test_clinician_suggests_an_article_the_patient_sees_it(
    services: Services, world: World, app: Any
) -> None:
    clinic = await world.clinic()
    elsewhere = await world.clinic(name="Elsewhere")
    patient: Any = await active_patient(services, clinic)
    await world.staff(clinic, role="nurse", email="nurse@clinic.example")
    await world.staff(elsewhere, role="nurse", email="other@clinic.example")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as staff:
        await staff_sign_in(staff, "other@clinic.example")
        page = await staff.get(f"/staff/desk/patients/{patient.id}")
        assert page.status_code == 404  # another clinic's patient
        csrf = csrf_of((await staff.get("/staff/desk/pending")).text)
        r = await staff.post(
            f"/staff/desk/patients/{patient.id}/articles",
            data={"csrf_token": csrf, "slug": "healthy-plate"},
        )
        assert r.status_code == 404
        staff.cookies.clear()
        await staff_sign_in(staff, "nurse@clinic.example")
        page = await staff.get(f"/staff/desk/patients/{patient.id}")
        assert "The healthy plate" in page.text
        r = await staff.post(
            f"/staff/desk/patients/{patient.id}/articles",
            data={"csrf_token": csrf_of(page.text), "slug": "healthy-plate", "note": CANARY_TEXT},
        )
        assert r.status_code == 303
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await patient_sign_in(client, "pat@example.org")
        lib = await client.get("/portal/library")
        assert "Suggested by your care team" in lib.text and CANARY_TEXT in lib.text
    async with services.sessions() as s:
        rows = (await s.scalars(select(ArticleAssignment))).all()
        events = (
            await s.scalars(select(AuditEvent).where(AuditEvent.action == "article.assign"))
        ).all()
    assert len(rows) == 1 and rows[0].note == CANARY_TEXT
    assert CANARY_TEXT not in json.dumps([e.details for e in events])


async def test_upcoming_appointments_show_in_the_inbox(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    when = services.clock.now() + timedelta(days=3)
    async with services.transaction() as s:
        p = await s.get(Patient, patient.id)
        c = await s.get(Clinic, clinic.id)
        assert p and c
        await appointments.schedule(s, services, clinic=c, patient=p, starts_at=when, actor="test")
    await patient_sign_in(client, "pat@example.org")
    inbox = await client.get("/portal")
    local = when.astimezone(__import__("zoneinfo").ZoneInfo(clinic.timezone))
    assert "Upcoming appointments" in inbox.text and local.strftime("%Y-%m-%d %H:%M") in inbox.text


async def test_portal_pages_carry_the_security_headers(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await active_patient(services, clinic)
    for path in ("/portal/login", "/enrol", "/r/abcdefghijklmnopqrstuvwxyz123456"):
        r = await client.get(path)
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert "<script" not in r.text and "style=" not in r.text
    await patient_sign_in(client, "pat@example.org")
    r = await client.get("/portal")
    assert r.headers["cache-control"] == "no-store" and "<script" not in r.text
    css = await client.get("/static/carebridge.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_library_cli_lists_and_assigns(tmp_path: Path) -> None:
    cfg = tmp_path / "carebridge.toml"
    cfg.write_text(
        '[store]\nurl = "sqlite+aiosqlite:///cb.db"\n[keys]\nfile = "keys.json"\n'
        '[web]\nlisten = "127.0.0.1:0"\n[delivery]\nmaildir = "outbox"\n'
    )

    def cb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=dict(os.environ),
        )

    assert cb("keys", "init").returncode == 0
    assert cb("db", "upgrade").returncode == 0
    r = cb("library", "list", "--language", "es", "--topic", "vaccines", "--json")
    assert r.returncode == 0, r.stderr
    assert [a["slug"] for a in json.loads(r.stdout)] == ["adult-vaccines"]
    r = cb("library", "assign", "no-such-patient", "adult-vaccines")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no patient" in r.stderr

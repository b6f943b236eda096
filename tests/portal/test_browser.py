"""The whole patient journey in headless Chromium against a real uvicorn on a free port:
desk enrolment, the email in the maildir, the link, terms, password, sign-in, an appointment
request, a staff reply, the notification, reading it. Plus an axe-core accessibility audit of
every page on the way. Screenshots go to ``test-artifacts/portal/`` (kept by CI).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.careteam import threads
from gateway.models import AuditEvent, Patient, Staff, Thread
from gateway.serve import WebPart
from gateway.services import Services
from tests.portal.mail import deliver
from tests.support.world import FakeClock, World

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "portal"
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright for Python is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.slow,
]
PASSWORD = "violet tractor umbrella 93"


@pytest.fixture
async def server(
    services: Services, with_config: Callable[..., Services], free_port: Callable[[], int]
) -> AsyncIterator[tuple[Services, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    svc = with_config(services, web={"listen": f"127.0.0.1:{port}", "base_url": base})
    part = WebPart(svc)
    await part.start()
    try:
        yield svc, base
    finally:
        await part.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            # Off the network entirely: only our loopback server resolves.
            args=["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
        )
        try:
            yield b
        finally:
            await b.close()


class Audit:
    """Runs axe-core (bundled by axe-playwright-python, no network) on each page visited."""

    def __init__(self) -> None:
        try:
            from axe_playwright_python.async_playwright import Axe
        except ImportError:  # pragma: no cover - the journey still runs
            self.axe = None
        else:
            self.axe = Axe()
        self.findings: list[tuple[str, str, str]] = []

    async def check(self, page: Any, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        if self.axe is None:
            return
        results = await self.axe.run(page)
        for v in results.response.get("violations", []):
            self.findings.append((name, v.get("id", ""), v.get("impact") or ""))

    def critical(self) -> list[tuple[str, str, str]]:
        return [f for f in self.findings if f[2] == "critical"]


async def test_patient_journey_in_chromium(
    server: tuple[Services, str], world: World, browser: Any, clock: FakeClock
) -> None:
    services, base = server
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    audit = Audit()
    clinic = await world.clinic()
    await world.staff(clinic, role="front_desk", email="desk@clinic.example")
    nurse = await world.staff(clinic, role="nurse", email="nurse@clinic.example")

    # -- at the desk: staff sign in and enrol the patient after checking ID --------------------
    desk = await (await browser.new_context()).new_page()
    await desk.goto(f"{base}/staff/login?next=/staff/desk/enrol")
    await audit.check(desk, "01-staff-login")
    await desk.get_by_label("Email address").fill("desk@clinic.example")
    await desk.get_by_label("Password").fill("correct horse battery staple 42")
    await desk.get_by_role("button", name="Sign in").click()
    await desk.wait_for_url(f"{base}/staff/desk/enrol")
    await audit.check(desk, "02-desk-enrol")
    await desk.get_by_label("Given name").fill("Rosa")
    await desk.get_by_label("Family name").fill("Quintero")
    await desk.get_by_label("Date of birth").fill("1979-06-30")
    await desk.get_by_label("Email address").fill("rosa@example.org")
    await desk.get_by_label("I have checked the patient's photo ID").check()
    await desk.get_by_role("button", name="Enrol and send the invitation").click()
    await desk.wait_for_url("**/staff/desk/patients/*")
    assert "not confirmed yet" in await desk.content()
    await audit.check(desk, "03-desk-pending")

    # -- the email, then the link in a fresh browser (no cookies) ------------------------------
    invitation = await deliver(services)
    assert [m.message["To"] for m in invitation] == ["rosa@example.org"]
    link = invitation[0].link("/r/")
    patient_ctx = await browser.new_context()
    page = await patient_ctx.new_page()
    await page.goto(base + link)
    assert "Riverside Family Clinic" in await page.content()
    await audit.check(page, "04-register")
    await page.get_by_label("I have read and agree").check()
    await page.get_by_label("Choose a password").fill("password123")
    await page.get_by_label("Type the password again").fill("password123")
    await page.get_by_role("button", name="Agree and create my account").click()
    assert "too easy to guess" in await page.content()
    await audit.check(page, "05-register-weak-password")
    await page.get_by_label("I have read and agree").check()
    await page.get_by_label("Choose a password").fill(PASSWORD)
    await page.get_by_label("Type the password again").fill(PASSWORD)
    await page.get_by_role("button", name="Agree and create my account").click()
    await page.wait_for_url(f"{base}/portal/login?done=registered")
    assert link.rsplit("/", 1)[1] not in page.url  # no token left in the address bar

    # -- sign in, ask for an appointment --------------------------------------------------------
    await audit.check(page, "06-login")
    await page.get_by_label("Email address").fill("rosa@example.org")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/portal")
    await audit.check(page, "07-inbox-empty")
    await page.get_by_role("link", name="New request").first.click()
    await audit.check(page, "08-compose-menu")
    await page.get_by_role("link", name="Appointment request").click()
    content = await page.content()
    assert "within one business day" in content and "911" in content
    await audit.check(page, "09-compose-appointment")
    await page.get_by_label("Reason for the visit").fill("Follow-up on blood pressure")
    await page.get_by_label("Monday").check()
    await page.get_by_label("Morning").check()
    await page.get_by_role("button", name="Send request").click()
    await page.wait_for_url("**/portal/threads/*")
    assert "Sent." in await page.content()
    await audit.check(page, "10-request-sent")

    # -- the care team answers; the patient gets a PHI-free email and reads the reply -----------
    async with services.transaction() as s:
        thread = (await s.scalars(select(Thread))).one()
        member = await s.get(Staff, nurse.id)
        assert member is not None and thread.request_type == "appointment"
        await threads.post_staff_message(
            s, services, thread=thread, staff=member, body="We can see you Monday at 9:00."
        )
    clock.advance(minutes=5)  # past the coalescing window
    mails = await deliver(services)
    notice = next(m for m in mails if "/t/" in m.text and m.message["To"] == "rosa@example.org")
    assert "Monday at 9:00" not in notice.raw.decode("utf-8", "replace")
    await page.goto(f"{base}/portal")
    assert "New reply" in await page.content()
    await audit.check(page, "11-inbox-unread")
    await page.goto(base + notice.link("/t/"))
    await page.wait_for_url(f"{base}/portal/threads/{thread.id}")
    assert "We can see you Monday at 9:00." in await page.content()
    await audit.check(page, "12-thread-read")
    async with services.sessions() as s:
        patient = (await s.scalars(select(Patient))).one()
        reads = (
            await s.scalars(select(AuditEvent).where(AuditEvent.action == "thread.read"))
        ).all()
    assert patient.status == "active" and reads

    # -- the urgent screen, the other pages, and Spanish ----------------------------------------
    await page.goto(f"{base}/portal/compose/question")
    await page.get_by_label("Subject").fill("Tonight")
    await page.get_by_label("Your question").fill("I have chest pain")
    await page.get_by_role("button", name="Send request").click()
    assert "call 911 now" in (await page.content()).lower()
    await audit.check(page, "13-urgent")
    await page.get_by_role("button", name="I understand, send it anyway").click()
    await page.wait_for_url("**/portal/threads/*")
    assert "Flagged urgent" in await page.content()
    for path, name in (
        ("/portal/results", "14-results"),
        ("/portal/library", "15-library"),
        ("/portal/preferences", "16-preferences"),
    ):
        await page.goto(base + path)
        await audit.check(page, name)
    await page.goto(f"{base}/portal")
    await page.get_by_role("link", name="Español").click()
    await page.wait_for_url(f"{base}/portal?lang=es")
    assert await page.get_attribute("html", "lang") == "es"
    await page.get_by_role("link", name="Nueva solicitud").first.click()  # the choice sticks
    assert await page.get_attribute("html", "lang") == "es"
    assert "Los mensajes se responden en un día hábil." in await page.content()
    await audit.check(page, "17-compose-es")
    assert audit.critical() == [], audit.findings

"""Helpers for the patient journey: forms with their CSRF token, a registered patient,
signing in. Plain functions, imported by the tests that need them (fixtures stay in conftest)."""

from __future__ import annotations

import re
from datetime import date

import httpx

from gateway.passwords import hash_password
from gateway.portal import patients
from gateway.services import Services

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF field in the form"
    return match.group(1)


async def post_form(
    client: httpx.AsyncClient, form_path: str, data: dict[str, str], action: str | None = None
) -> httpx.Response:
    """GET the form page (for its CSRF token), then POST the form like a browser would."""
    page = await client.get(form_path)
    assert page.status_code == 200, page.status_code
    return await client.post(action or form_path, data={**data, "csrf_token": csrf_of(page.text)})


STRONG_PASSWORD = "violet tractor umbrella 93"


async def active_patient(services: Services, clinic: object, **kw: object) -> object:
    """A registered patient (terms agreed, email verified, password set), as after /r/."""
    kw.setdefault("given_name", "Pat")
    kw.setdefault("family_name", "Example")
    kw.setdefault("date_of_birth", date(1980, 4, 23))
    kw.setdefault("email", "pat@example.org")
    async with services.transaction() as s:
        result = await patients.enroll(
            s,
            services.keyring,
            clinic=clinic,
            source="desk",
            actor="test",
            **kw,  # type: ignore[arg-type]
        )
        p = result.patient
        now = services.clock.now()
        p.email_verified_at = p.terms_agreed_at = now
        p.terms_version = "2026-01"
        p.password_hash = hash_password(STRONG_PASSWORD)
        p.status = "active"
        return p


async def patient_sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/portal/login")
    r = await client.post(
        "/portal/login",
        data={"csrf_token": csrf_of(page.text), "email": email, "password": STRONG_PASSWORD},
    )
    assert r.status_code == 303, r.text

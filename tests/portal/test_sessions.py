"""Sessions: cookie flags, CSRF, principals kept apart, idle/absolute timeouts, lockout, audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pyotp
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import select

from gateway.models import AuditEvent, WebSession
from gateway.portal.accounts import Principal
from gateway.services import Services
from gateway.web.app import create_app
from gateway.web.sessions import require_patient, require_staff
from tests.portal.helpers import csrf_of, post_form
from tests.support.world import FakeClock, World

PASSWORD = "correct horse battery staple 42"


def add_probes(app: FastAPI) -> None:
    @app.get("/staff/probe")
    async def staff_probe(
        p: Annotated[Principal, Depends(require_staff("nurse"))],
    ) -> dict[str, str]:
        return {"kind": p.kind, "id": p.id}

    @app.get("/staff/admin-probe")
    async def admin_probe(
        p: Annotated[Principal, Depends(require_staff("clinic_admin"))],
    ) -> dict[str, str]:
        return {"kind": p.kind}

    @app.get("/portal/probe")
    async def patient_probe(p: Annotated[Principal, Depends(require_patient)]) -> dict[str, str]:
        return {"kind": p.kind}


@pytest.fixture
def probed(app: FastAPI) -> FastAPI:
    add_probes(app)
    return app


async def staff_sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: str
) -> httpx.Response:
    return await post_form(client, "/staff/login", {"email": email, "password": password, **extra})


async def test_sign_in_sets_httponly_lax_cookie_and_audits(
    services: Services, world: World, client: httpx.AsyncClient, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    nurse = await world.staff(clinic, email="nurse@clinic.example")
    assert (await client.get("/staff/probe")).status_code == 303
    r = await staff_sign_in(client, "nurse@clinic.example")
    assert r.status_code == 303 and r.headers["location"] == "/staff"
    set_cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("cb_session="))
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie  # base_url is http in tests
    assert (await client.get("/staff/probe")).json() == {"kind": "staff", "id": nurse.id}
    async with services.sessions() as s:
        actions = (
            await s.scalars(select(AuditEvent.action).where(AuditEvent.object_id == nurse.id))
        ).all()
    assert "auth.sign_in" in actions


async def test_cookie_is_secure_when_base_url_is_https(
    services: Services, world: World, with_config: Callable[..., Services]
) -> None:
    svc = with_config(services, web={"base_url": "https://portal.example"})
    clinic = await world.clinic()
    await world.staff(clinic, email="n2@clinic.example")
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        r = await staff_sign_in(c, "n2@clinic.example")
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("cb_session="))
    assert "Secure" in cookie


async def test_post_without_matching_csrf_token_is_refused(
    world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n3@clinic.example")
    await client.get("/staff/login")
    data = {"email": "n3@clinic.example", "password": PASSWORD}
    assert (await client.post("/staff/login", data=data)).status_code == 403
    assert (
        await client.post("/staff/login", data={**data, "csrf_token": "x" * 43})
    ).status_code == 403
    # A token minted for another browser is worthless here.
    other = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    async with other:
        foreign = csrf_of((await other.get("/staff/login")).text)
    assert (
        await client.post("/staff/login", data={**data, "csrf_token": foreign})
    ).status_code == 403


async def test_roles_and_principal_kinds_are_kept_apart(
    services: Services, world: World, client: httpx.AsyncClient, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n4@clinic.example")
    await staff_sign_in(client, "n4@clinic.example")
    assert (await client.get("/staff/admin-probe")).status_code == 403
    r = await client.get("/portal/probe")
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/login")


async def test_idle_timeout_ends_the_session(
    world: World, client: httpx.AsyncClient, clock: FakeClock, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n5@clinic.example")
    await staff_sign_in(client, "n5@clinic.example")
    clock.advance(minutes=29)
    assert (await client.get("/staff/probe")).status_code == 200
    clock.advance(minutes=29)  # active 29 minutes ago: still fine
    assert (await client.get("/staff/probe")).status_code == 200
    clock.advance(minutes=31)
    assert (await client.get("/staff/probe")).status_code == 303


async def test_absolute_timeout_ends_even_an_active_session(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n6@clinic.example")
    await staff_sign_in(client, "n6@clinic.example")
    for _ in range(12 * 3 - 1):
        clock.advance(minutes=20)
        assert (await client.get("/staff/probe")).status_code == 200
    clock.advance(minutes=20)
    assert (await client.get("/staff/probe")).status_code == 303
    async with services.sessions() as s:
        assert (await s.scalars(select(WebSession))).all() == []


async def test_sign_out_revokes_the_server_side_session(
    world: World, client: httpx.AsyncClient, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n7@clinic.example")
    await staff_sign_in(client, "n7@clinic.example")
    stolen = client.cookies.get("cb_session")
    assert stolen
    page = await client.get("/staff/login")
    r = await client.post("/staff/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    client.cookies.set("cb_session", stolen)  # replaying the old cookie gets nothing
    assert (await client.get("/staff/probe")).status_code == 303


async def test_tampered_cookie_is_ignored(
    world: World, client: httpx.AsyncClient, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n8@clinic.example")
    await staff_sign_in(client, "n8@clinic.example")
    value = client.cookies.get("cb_session")
    assert value
    sid, _, mac = value.rpartition(".")
    client.cookies.set("cb_session", sid + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"))
    assert (await client.get("/staff/probe")).status_code == 303


async def lockout_story(client: httpx.AsyncClient, email: str) -> list[tuple[int, str]]:
    out = []
    for _ in range(7):
        r = await staff_sign_in(client, email, "wrong password")
        out.append((r.status_code, "Too many attempts" in r.text))
    return out  # type: ignore[return-value]


async def test_lockout_with_backoff_same_for_unknown_accounts(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock, probed: FastAPI
) -> None:
    clinic = await world.clinic()
    member = await world.staff(clinic, email="n9@clinic.example")
    known = await lockout_story(client, "n9@clinic.example")
    unknown = await lockout_story(client, "nobody-here@clinic.example")
    assert known == unknown
    assert known[:5] == [(401, False)] * 5 and known[5:] == [(401, True)] * 2
    # Locked: even the right password is refused until the backoff passes.
    r = await staff_sign_in(client, "n9@clinic.example")
    assert r.status_code == 401 and "Too many attempts" in r.text
    clock.advance(minutes=10)
    r = await staff_sign_in(client, "n9@clinic.example")
    assert r.status_code == 303
    async with services.sessions() as s:
        failed = (
            await s.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "auth.sign_in_failed", AuditEvent.object_id == member.id
                )
            )
        ).all()
    assert len(failed) >= 5


async def test_totp_is_required_once_set(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    member = await world.staff(clinic, email="n10@clinic.example")
    secret = pyotp.random_base32()
    async with services.transaction() as s:
        row: Any = await s.get(type(member), member.id)
        row.totp_secret = secret
    assert (await staff_sign_in(client, "n10@clinic.example")).status_code == 401
    code = pyotp.TOTP(secret).at(clock.now())
    assert (await staff_sign_in(client, "n10@clinic.example", code=code)).status_code == 303


async def test_open_redirect_after_sign_in_is_refused(
    world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="n11@clinic.example")
    r = await staff_sign_in(client, "n11@clinic.example", next="//evil.example/x")
    assert r.headers["location"] == "/staff"


async def test_purge_expired_removes_only_dead_sessions(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock, probed: FastAPI
) -> None:
    from gateway.portal.accounts import purge_expired

    clinic = await world.clinic()
    await world.staff(clinic, email="p1@clinic.example")
    await world.staff(clinic, email="p2@clinic.example")
    await staff_sign_in(client, "p1@clinic.example")
    clock.advance(minutes=20)
    other = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    async with other:
        await staff_sign_in(other, "p2@clinic.example")
        clock.advance(minutes=15)  # the first is idle for 35 minutes, the second for 15
        async with services.transaction() as s:
            assert await purge_expired(s, services) == 1
        assert (await other.get("/staff/probe")).status_code == 200
    assert (await client.get("/staff/probe")).status_code == 303

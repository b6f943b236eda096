"""Hardening of the web app: HSTS, private metrics, sign-in throttled per client address,
TOTP codes used once, every query parameter validated, private database and key files.

Requests go through the real ASGI app with httpx (the client address set per transport, as
uvicorn would report it); the database is the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import text

from gateway import db
from gateway.crypto import KeyRing, write_keyring
from gateway.models import Patient, Staff
from gateway.services import Services
from gateway.web import admin, desk, pages, portal, portal_public, staff, unsubscribe
from gateway.web.app import create_app
from tests.admin.helpers import PASSWORD, csrf_of
from tests.portal.helpers import active_patient, patient_sign_in
from tests.support.world import FakeClock, World

LOOPBACK = ("127.0.0.1", 40000)
ELSEWHERE = ("203.0.113.9", 40000)


def client_for(app: FastAPI, peer: tuple[str, int] = LOOPBACK) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def replaced(services: Services, **web: Any) -> Services:
    cfg = services.config
    return dataclasses.replace(
        services, config=dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, **web))
    )


# -- HSTS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [("https://portal.example", True), ("http://127.0.0.1:8025", False)],
)
async def test_hsts_only_when_served_over_https(
    services: Services, base_url: str, expected: bool
) -> None:
    async with client_for(create_app(replaced(services, base_url=base_url))) as c:
        for path in ("/healthz", "/portal/login", "/api/v1/queues", "/no-such-page"):
            hsts = (await c.get(path)).headers.get("strict-transport-security")
            if expected:
                assert hsts is not None and "max-age=" in hsts, path
            else:
                assert hsts is None, path


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_without_configuration_answer_loopback_clients_only(
    services: Services,
) -> None:
    app = create_app(services)
    async with client_for(app, ELSEWHERE) as outside, client_for(app, LOOPBACK) as local:
        refused = await outside.get("/metrics")
        assert refused.status_code == 403
        assert "carebridge_" not in refused.text
        assert (await local.get("/metrics")).status_code == 200


async def test_metrics_behind_a_token_refuse_anyone_without_it(
    services: Services, tmp_path: Path
) -> None:
    token = "s3cret-metrics-token-0123456789"
    (tmp_path / "metrics.token").write_text(token + "\n")
    app = create_app(replaced(services, metrics_token_file=str(tmp_path / "metrics.token")))
    async with client_for(app, LOOPBACK) as local, client_for(app, ELSEWHERE) as outside:
        assert (await local.get("/metrics")).status_code == 401
        wrong = {"authorization": "Bearer " + token[:-1] + "x"}
        assert (await outside.get("/metrics", headers=wrong)).status_code == 401
        good = {"authorization": "Bearer " + token}
        r = await outside.get("/metrics", headers=good)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


async def test_metrics_on_their_own_listener_are_gone_from_the_web_port(
    services: Services,
) -> None:
    from gateway.serve import WebPart

    svc = replaced(services, metrics_listen="127.0.0.1:0")
    async with client_for(create_app(svc), LOOPBACK) as local:
        assert (await local.get("/metrics")).status_code == 404
    part = WebPart(svc)
    await part.start()
    try:
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{part.metrics_port}/metrics")
            assert r.status_code == 200
            other = await c.get(f"http://127.0.0.1:{part.metrics_port}/portal/login")
            assert other.status_code == 404
    finally:
        await part.stop()


# -- sign-in throttled per client address ---------------------------------------------------


async def _try_sign_in(c: httpx.AsyncClient, email: str, password: str, code: str = "") -> Any:
    page = await c.get("/staff/login")
    return await c.post(
        "/staff/login",
        data={"email": email, "password": password, "code": code,
              "csrf_token": csrf_of(page.text)},
    )  # fmt: skip


async def test_one_address_trying_25_accounts_is_slowed(services: Services, world: World) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="real@clinic.example")
    app = create_app(services)
    async with client_for(app, ("198.51.100.7", 1)) as sprayer:
        answers = []
        for i in range(25):
            r = await _try_sign_in(sprayer, f"user{i}@clinic.example", "guess-" + str(i))
            answers.append(r)
        assert all(r.status_code == 401 for r in answers)
        locked = [i for i, r in enumerate(answers) if "Too many attempts" in r.text]
        assert locked and locked[0] <= 20, "25 accounts from one address were never slowed"
        # Locked out for the address: even the right password is refused from there...
        r = await _try_sign_in(sprayer, "real@clinic.example", PASSWORD)
        assert r.status_code == 401 and "Too many attempts" in r.text
    # ...while the same account signs in from another address.
    async with client_for(app, ("192.0.2.44", 1)) as colleague:
        assert (await _try_sign_in(colleague, "real@clinic.example", PASSWORD)).status_code == 303


# -- TOTP codes used once ---------------------------------------------------------------------


async def test_a_totp_code_is_accepted_once_then_refused(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    member = await world.staff(clinic, email="otp@clinic.example")
    secret = pyotp.random_base32()
    async with services.transaction() as s:
        row = await s.get(Staff, member.id)
        assert row is not None
        row.totp_secret = secret
    code = pyotp.TOTP(secret).at(clock.now())
    app = create_app(services)
    async with client_for(app) as first:
        assert (await _try_sign_in(first, "otp@clinic.example", PASSWORD, code)).status_code == 303
    clock.advance(seconds=10)  # still inside the code's window
    async with client_for(app) as replay:
        r = await _try_sign_in(replay, "otp@clinic.example", PASSWORD, code)
        assert r.status_code == 401
    clock.advance(seconds=30)  # the next step's code is fine
    async with client_for(app) as later:
        fresh = pyotp.TOTP(secret).at(clock.now())
        assert fresh != code
        assert (await _try_sign_in(later, "otp@clinic.example", PASSWORD, fresh)).status_code == 303


async def test_a_patient_totp_code_is_used_once_too(
    services: Services, world: World, clock: FakeClock
) -> None:
    clinic = await world.clinic()
    secret = pyotp.random_base32()
    patient = await active_patient(services, clinic, email="otp-pat@example.org")
    async with services.transaction() as s:
        row = await s.get(Patient, patient.id)  # type: ignore[attr-defined]
        assert row is not None
        row.totp_secret = secret
    code = pyotp.TOTP(secret).at(clock.now())
    app = create_app(services)
    from tests.portal.helpers import STRONG_PASSWORD

    async def attempt() -> int:
        async with client_for(app) as c:
            page = await c.get("/portal/login")
            r = await c.post(
                "/portal/login",
                data={"email": "otp-pat@example.org", "password": STRONG_PASSWORD,
                      "code": code, "csrf_token": csrf_of(page.text)},
            )  # fmt: skip
            return r.status_code

    # Two sign-ins racing with the same code: exactly one gets in.
    assert sorted(await asyncio.gather(attempt(), attempt())) == [303, 401]
    assert await attempt() == 401


# -- every query parameter validated ---------------------------------------------------------

GARBAGE = {
    "before": ["abc", "-5", "0", str(2**70), "1e400"],
    "since": ["2026-13-45", "9999-12-31x", "\x00"],
    "until": ["9999-12-31", "2026-02-30"],
    "state": ["<script>", "HELD"],
    "closed": ["maybe", "2"],
}


def _routes_with_query_params(*routers: APIRouter) -> list[tuple[str, str]]:
    """Every GET route of these routers with each of its query parameters."""
    out = []
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute) or "GET" not in route.methods:
                continue
            path = route.path.replace("{", "").replace("}", "")  # path params: their names
            for param in route.dependant.query_params:
                out.append((path, param.alias))
    return out


async def test_every_staff_and_admin_query_parameter_refuses_huge_and_garbage_with_400(
    services: Services, world: World
) -> None:
    await world.staff(None, role="operator", email="op@clinic.example")
    app = create_app(services)
    params = _routes_with_query_params(admin.router, staff.router, desk.router)
    names = {name for _, name in params}
    assert {"clinic", "before", "since", "until", "state", "closed"} <= names
    async with client_for(app) as c:
        r = await _try_sign_in(c, "op@clinic.example", PASSWORD)
        assert r.status_code == 303
        for path, name in params:
            for value in ["9" * 5000, *GARBAGE.get(name, [])]:
                for accept in ("text/html", "application/json"):
                    r = await c.get(path, params={name: value}, headers={"accept": accept})
                    assert r.status_code == 400, (path, name, value[:20], r.status_code)
                    assert name in r.text, (path, name)
                    assert "Traceback" not in r.text
                    if len(value) > 100:
                        assert value not in r.text


async def test_every_portal_query_parameter_refuses_huge_values_with_400(
    services: Services, world: World
) -> None:
    clinic = await world.clinic()
    await active_patient(services, clinic, email="q@example.org")
    app = create_app(services)
    params = _routes_with_query_params(
        portal.router, portal_public.router, pages.router, unsubscribe.router
    )
    assert {"sent", "q", "topic", "saved", "next"} <= {name for _, name in params}
    async with client_for(app) as c:
        await patient_sign_in(c, "q@example.org")
        for path, name in params:
            r = await c.get(path, params={name: "x" * 5000}, headers={"accept": "text/html"})
            assert r.status_code == 400, (path, name, r.status_code)


async def test_the_audit_page_still_pages_with_a_sane_before(
    services: Services, world: World
) -> None:
    await world.staff(None, role="operator", email="op2@clinic.example")
    async with client_for(create_app(services)) as c:
        assert (await _try_sign_in(c, "op2@clinic.example", PASSWORD)).status_code == 303
        for query in ("?before=5", "?since=2026-01-01&until=2026-12-31", "?state=held"):
            assert (await c.get("/admin/audit" + query)).status_code == 200, query


# -- private files ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_wal_and_key_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = tmp_path / "fresh" / "var" / "cb.db"
        engine = db.create_engine(f"sqlite+aiosqlite:///{store}", None)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (x INTEGER)"))
                await conn.execute(text("INSERT INTO t VALUES (1)"))
            wal = store.with_name("cb.db-wal")
            assert wal.exists()
            assert _mode(store) == 0o600
            assert _mode(wal) == 0o600
            assert _mode(store.with_name("cb.db-shm")) == 0o600
            assert _mode(store.parent) == 0o700
        finally:
            await engine.dispose()
        # A store left world-readable by an older version is tightened on the next start.
        store.chmod(0o644)
        engine = db.create_engine(f"sqlite+aiosqlite:///{store}", None)
        await engine.dispose()
        assert _mode(store) == 0o600
        keys = tmp_path / "new-dir" / "keys.json"
        write_keyring(keys, KeyRing.generate())
        assert _mode(keys) == 0o600
        assert _mode(keys.parent) == 0o700
    finally:
        os.umask(old)

"""Shared fixtures: a real store (SQLite file, and PostgreSQL when configured), real keys,
a controllable clock, and factories for clinics, staff and patients.

Tests that take ``services`` run once per backend: SQLite always, PostgreSQL when
``CAREBRIDGE_TEST_PG_URL`` is set (``.ci/run`` always sets it). Each PostgreSQL test gets a
database of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import db
from gateway.admin import clinics
from gateway.careteam import staff
from gateway.config import Config, parse_config
from gateway.crypto import KeyRing, write_keyring
from gateway.models import Clinic, Patient, Staff
from gateway.portal import patients
from gateway.services import Services, open_services
from tests.support.net import reserve_port

PG_ENV = "CAREBRIDGE_TEST_PG_URL"

# PHI canaries: planted in PHI fields by tests that check nothing leaks.
CANARY_GIVEN = "Zebulon"
CANARY_FAMILY = "Canaryfield"
CANARY_EMAIL = "canary-zq7@example.org"
CANARY_TEXT = "CANARY-PHI-7f3a chest results"


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


def pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a Config for a test, from TOML-shaped overrides: make_config(smtp={"listen": ...})."""

    def make(store_url: str | None = None, **sections: dict[str, Any]) -> Config:
        raw: dict[str, Any] = {
            "store": {"url": store_url or f"sqlite+aiosqlite:///{tmp_path}/cb.db"},
            "keys": {"file": str(tmp_path / "keys.json")},
            "smtp": {"listen": "127.0.0.1:0", "hostname": "mx.test.example"},
            "web": {"listen": "127.0.0.1:0", "base_url": "http://127.0.0.1:8025"},
            "delivery": {"maildir": str(tmp_path / "outbox")},
            "log": {"level": "DEBUG"},
        }
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return parse_config(raw, base_dir=str(tmp_path))

    return make


@pytest.fixture
def keyring(tmp_path: Path) -> KeyRing:
    ring = KeyRing.generate()
    write_keyring(tmp_path / "keys.json", ring)
    return ring


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not pg_url():
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)"
        )
    return str(request.param)


@pytest.fixture
async def store_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A freshly migrated database of the requested backend."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/cb.db"
        await asyncio.to_thread(db.upgrade, url)
        yield url
        return
    base = pg_url()
    assert base is not None
    name = f"cb_test_{secrets.token_hex(6)}"
    await _pg_admin(base, f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        await asyncio.to_thread(db.upgrade, url)
        yield url
    finally:
        await _pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def services(
    store_url: str, make_config: Callable[..., Config], keyring: KeyRing, clock: FakeClock
) -> AsyncIterator[Services]:
    """Services on a migrated store with a fake clock. Runs on SQLite and on PostgreSQL."""
    svc = await open_services(make_config(store_url=store_url), keyring=keyring, clock=clock)
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
def with_config() -> Callable[..., Services]:
    """A copy of ``services`` with some config sections replaced (same store, keys, clock)."""

    def make(svc: Services, **sections: dict[str, Any]) -> Services:
        cfg = svc.config
        for name, values in sections.items():
            cfg = dataclasses.replace(
                cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)}
            )
        return dataclasses.replace(svc, config=cfg)

    return make


@dataclasses.dataclass
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


@pytest.fixture
def world(services: Services) -> World:
    return World(services)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Ports for servers that bind later (subprocesses, threads): see tests/support/net.py."""
    return reserve_port

"""Shared fixtures: a real store (SQLite file, and PostgreSQL when configured), real keys,
a controllable clock, and factories for clinics, staff, patients and threads.

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
from pathlib import Path
from typing import Any

import pytest

from gateway import db
from gateway.config import Config, parse_config
from gateway.crypto import KeyRing, write_keyring
from gateway.services import Services, open_services
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.net import reserve_port
from tests.support.world import FakeClock, World

# Test modules import these from tests.support; the names stay here for those that still
# import them from this conftest.
__all__ = ["CANARY_EMAIL", "CANARY_FAMILY", "CANARY_GIVEN", "CANARY_TEXT", "FakeClock", "World"]

# Fixtures shared by more than one test folder (inbound and security stories).
pytest_plugins = ("tests.support.inbound",)

PG_ENV = "CAREBRIDGE_TEST_PG_URL"


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


@pytest.fixture
def world(services: Services) -> World:
    return World(services)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Ports for servers that bind later (subprocesses, threads): see tests/support/net.py."""
    return reserve_port

"""The running system's shared parts, built once at start-up and passed explicitly.

There is no global state: the CLI, the web app, the SMTP intake and the workers all receive
one :class:`Services`. Tests build their own with their own config, keys, database and clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway import db
from gateway.config import Config
from gateway.crypto import KeyRing, load_keyring
from gateway.executors import Executors
from gateway.metrics import Metrics
from gateway.turns import Turns


class Clock(Protocol):
    def now(self) -> datetime: ...


class Part(Protocol):
    """One long-running piece of ``carebridge serve`` (web, delivery, SMTP, an IMAP poller).

    Defined here, with the infrastructure every part shares, so ``gateway/serve.py`` and the
    areas that build parts both depend on it rather than on each other."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Services:
    config: Config
    keyring: KeyRing
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock = field(default_factory=SystemClock)
    # Parts report readiness here (e.g. "smtp": True once listening); /readyz reads it.
    ready: dict[str, bool] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # Turns at the store's single writer (SQLite), shared by this node's busiest writers.
    turns: Turns = field(default_factory=Turns)
    # The worker pools for argon2, mail parsing and DKIM/SPF: one each, started when first
    # used; copies made with dataclasses.replace share them.
    executors: Executors = field(default_factory=Executors)

    def __post_init__(self) -> None:
        self.turns.enabled = db.is_sqlite(self.engine)
        self.executors.configure(self.config)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work is committed on success and rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def close(self) -> None:
        self.executors.close()
        await self.engine.dispose()


async def open_services(
    config: Config,
    *,
    keyring: KeyRing | None = None,
    clock: Clock | None = None,
    require_schema: bool = True,
) -> Services:
    """Load keys (failing closed), connect to the store and check its schema."""
    ring = keyring or load_keyring(config.path(config.keys.file))
    engine = db.create_engine(
        config.store_url, ring, echo=config.store.echo, pool_size=config.store.pool_size
    )
    try:
        if require_schema:
            await db.require_migrated(engine)
    except BaseException:
        await engine.dispose()
        raise
    return Services(
        config=config,
        keyring=ring,
        engine=engine,
        sessions=db.sessionmaker(engine),
        clock=clock or SystemClock(),
    )

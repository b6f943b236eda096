"""The store's engine: SQLite (embedded, WAL) or PostgreSQL, with the key ring bound to it.

SQLite write transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the
database lock instead of failing later with a stale snapshot; ``synchronous=FULL`` makes a
commit survive power loss, which is what "250 only after a durable commit" needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gateway.crypto import KeyRing
from gateway.errors import NotMigratedError
from gateway.models.types import KEYRING_ATTR

log = logging.getLogger("carebridge.store")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" event below opens transactions.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 (in a 0700 directory if we create it) before SQLite does.

    SQLite creates its -wal and -shm files with the database file's permissions, so this one
    file decides who can read the store, its write-ahead log and its shared memory. A file
    left group- or world-readable by an older version is tightened.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("database file was mode %o; now 0600", mode)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(
    url: str, keyring: KeyRing | None, *, echo: bool = False, pool_size: int = 5
) -> AsyncEngine:
    """Create the async engine; ``keyring`` may be None only for schema-only work."""
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            _private_sqlite_file(Path(path))
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    if keyring is not None:
        bind_keyring(engine, keyring)
    return engine


def bind_keyring(engine: AsyncEngine, keyring: KeyRing) -> None:
    """Attach the key ring to this engine's dialect, where the encrypted column types find it."""
    setattr(engine.sync_engine.dialect, KEYRING_ATTR, keyring)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    except (OperationalError, ProgrammingError):
        return None
    except DBAPIError as exc:  # asyncpg reports a missing table through DBAPIError too
        if "alembic_version" in str(exc):
            return None
        raise
    return None if row is None else str(row[0])


async def require_migrated(engine: AsyncEngine) -> None:
    """Refuse to run on a database older (or newer) than this code."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        state = "has no schema" if current is None else f"is at revision {current}"
        raise NotMigratedError(
            f"the database {state}, this code needs {head}; run 'carebridge db upgrade'"
        )


def upgrade(url: str, keyring: KeyRing | None = None) -> None:
    """Run Alembic migrations to head (blocking; the CLI calls this outside the loop)."""
    from alembic import command

    cfg = alembic_config(url)
    cfg.attributes["keyring"] = keyring
    command.upgrade(cfg, "head")

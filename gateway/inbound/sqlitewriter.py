"""Step-1 inserts on SQLite in one hop: a whole group commit runs in one dedicated thread.

Through aiosqlite every statement of a transaction (BEGIN IMMEDIATE, the duplicate check, the
insert, COMMIT) is a separate trip to the driver's thread and back through the event loop; on
a busy machine each trip waits to be scheduled, and a commit shared by twenty SMTP sessions
takes several times its fsync. Here the batch is one call into one long-lived thread holding a
plain (synchronous) SQLAlchemy engine on the same file, with the same pragmas and the same
column types (so values are encrypted exactly as everywhere else).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import create_engine, event, insert, select
from sqlalchemy.engine import Engine

from gateway.crypto import KeyRing
from gateway.models import InboundMessage
from gateway.models.types import KEYRING_ATTR


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a returned commit has reached the disk
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class SqliteInserter:
    def __init__(self, async_url: str, keyring: KeyRing) -> None:
        url = async_url.replace("sqlite+aiosqlite://", "sqlite://", 1)
        self.engine: Engine = create_engine(url, pool_size=1, max_overflow=0)
        event.listen(self.engine, "connect", _pragmas)
        event.listen(self.engine, "begin", _begin)
        setattr(self.engine.dialect, KEYRING_ATTR, keyring)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cb-intake-writer")

    def _insert(self, rows: list[dict[str, Any]]) -> set[str]:
        """Insert rows whose Message-ID hash is new; return the ids actually inserted."""
        hashes = [str(r["message_id_hash"]) for r in rows]
        with self.engine.begin() as conn:
            existing: set[str] = set()
            for i in range(0, len(hashes), 500):
                found = conn.scalars(
                    select(InboundMessage.message_id_hash).where(
                        InboundMessage.message_id_hash.in_(hashes[i : i + 500])
                    )
                )
                existing.update(h for h in found if h)
            fresh = []
            for row in rows:
                if row["message_id_hash"] not in existing:
                    existing.add(row["message_id_hash"])
                    fresh.append(row)
            if fresh:
                conn.execute(insert(InboundMessage), fresh)
        return {str(r["id"]) for r in fresh}

    async def insert(self, rows: list[dict[str, Any]]) -> set[str]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.dispose()

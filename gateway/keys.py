"""Key rotation: re-encrypt every PHI value under the active key, in batches.

Rotation writes the new key file first (new writes use the new key from then on), then walks
each table holding encrypted columns in primary-key order, re-encrypting values whose key id
is not the active one, one committed batch at a time, so an interrupted rotation can simply be
run again. Old keys become "retired" only once no value remains under them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import LargeBinary, Table, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import audit
from gateway.crypto import KeyRing, key_id_of, write_keyring
from gateway.db import bind_keyring, sessionmaker
from gateway.models import Base
from gateway.models.types import _EncryptedBase


@dataclass(frozen=True)
class EncryptedColumn:
    table: Table
    column: str
    label: str


def encrypted_columns() -> Iterator[EncryptedColumn]:
    for table in Base.metadata.sorted_tables:
        for col in table.columns:
            if isinstance(col.type, _EncryptedBase):
                yield EncryptedColumn(table, col.name, col.type.label)


def _pk(table: Table) -> str:
    cols = list(table.primary_key.columns)
    assert len(cols) == 1, f"{table.name} needs a single-column primary key for rotation"
    return cols[0].name


async def key_usage(engine: AsyncEngine) -> Counter[str]:
    """How many stored values are under each key id (reads raw ciphertext, decrypts nothing)."""
    usage: Counter[str] = Counter()
    async with engine.connect() as conn:
        for ec in encrypted_columns():
            raw = type_coerce(ec.table.c[ec.column], LargeBinary)
            result = await conn.stream(select(raw).where(ec.table.c[ec.column].is_not(None)))
            async for (value,) in result:
                usage[key_id_of(bytes(value))] += 1
    return usage


async def count_rows_to_rotate(engine: AsyncEngine, ring: KeyRing) -> int:
    usage = await key_usage(engine)
    return sum(n for kid, n in usage.items() if kid != ring.active)


async def reencrypt(
    engine: AsyncEngine,
    ring: KeyRing,
    *,
    batch_size: int = 500,
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Re-encrypt every value not under ``ring.active``; returns how many were rewritten."""
    bind_keyring(engine, ring)
    done = 0
    sessions = sessionmaker(engine)
    for ec in encrypted_columns():
        pk_name = _pk(ec.table)
        pk = ec.table.c[pk_name]
        raw_col = type_coerce(ec.table.c[ec.column], LargeBinary)
        after: object = None
        while True:
            async with sessions() as session, session.begin():
                q = select(pk, raw_col).where(ec.table.c[ec.column].is_not(None)).order_by(pk)
                if after is not None:
                    q = q.where(pk > after)
                rows = (await session.execute(q.limit(batch_size))).all()
                if not rows:
                    break
                changed = 0
                for key, value in rows:
                    blob = bytes(value)
                    if key_id_of(blob) == ring.active:
                        continue
                    fresh = ring.encrypt(ring.decrypt(blob, ec.label), ec.label)
                    await session.execute(
                        update(ec.table)
                        .where(pk == key)
                        .values({ec.column: type_coerce(fresh, LargeBinary)})
                    )
                    changed += 1
                after = rows[-1][0]
            done += changed
            progress(changed)
    return done


async def rotate(
    engine: AsyncEngine,
    ring: KeyRing,
    key_file: Path,
    *,
    batch_size: int = 500,
    progress: Callable[[int], None] = lambda n: None,
    on_total: Callable[[int], None] = lambda n: None,
) -> tuple[KeyRing, int]:
    """Add a new active key, re-encrypt everything under it, then retire the old keys."""
    new_ring = ring.with_new_active_key()
    write_keyring(key_file, new_ring)
    on_total(await count_rows_to_rotate(engine, new_ring))
    n = await reencrypt(engine, new_ring, batch_size=batch_size, progress=progress)
    usage = await key_usage(engine)
    idle = {k for k in new_ring.keys if k != new_ring.active and usage.get(k, 0) == 0}
    final = new_ring.retire(idle)
    write_keyring(key_file, final)
    bind_keyring(engine, final)
    async with sessionmaker(engine)() as session, session.begin():
        await audit.record(
            session, "cli", "keys.rotate", "key", final.active, reencrypted=n, retired=sorted(idle)
        )
    return final, n

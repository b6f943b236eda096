"""The queue's claims: concurrent claimers never share a row (SKIP LOCKED on PostgreSQL,
the write lock on SQLite); backoff grows with jitter; only finished rows are purged."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta

import pytest

from gateway.errors import UsageError
from gateway.outbound import notify, queue
from gateway.outbound.notify import Kind, Notice


async def _queue_rows(services, world, n: int) -> list[str]:
    clinic = await world.clinic()
    ids = []
    async with services.transaction() as s:
        for i in range(n):
            row = await notify.enqueue(
                s,
                services.keyring,
                notice=Notice(kind=Kind.PASSWORD_RESET),
                clinic_id=clinic.id,
                recipient=f"p{i}@example.org",
                now=services.clock.now(),
            )
            ids.append(row.id)
    return ids


async def test_concurrent_claimers_get_disjoint_rows(services, world, clock):
    ids = await _queue_rows(services, world, 30)

    async def claimer(name: str) -> list[str]:
        got: list[str] = []
        while True:
            async with services.transaction() as s:
                rows = await queue.claim(
                    s, services.config.delivery, worker=name, now=clock.now(), limit=4
                )
                # Hold the claim a moment inside the transaction, as a real round does.
                await asyncio.sleep(0.01)
            if not rows:
                return got
            got += [r.id for r in rows]

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(3)))
    claimed = list(itertools.chain.from_iterable(results))
    assert sorted(claimed) == sorted(ids)  # every row once, none twice


def test_backoff_grows_with_jitter_and_is_capped():
    from gateway.config import DeliveryConfig

    cfg = DeliveryConfig(base_backoff_seconds=60, max_backoff_seconds=3600)
    rng = random.Random(7)
    for _ in range(200):
        delays = [queue.backoff(n, cfg, rng) for n in range(1, 8)]
        assert all(b > a for a, b in itertools.pairwise(delays[:6]))
        assert timedelta(seconds=45) <= delays[0] <= timedelta(seconds=60)
    assert queue.backoff(30, cfg, rng) <= timedelta(seconds=3600)


async def test_purge_only_touches_finished_rows(services, world, clock):
    await _queue_rows(services, world, 2)
    async with services.transaction() as s:
        with pytest.raises(UsageError):
            await queue.purge(s, states=["queued"], older_than=timedelta(0), now=clock.now())
    clock.advance(days=40)
    async with services.transaction() as s:
        assert (
            await queue.purge(s, states=["sent"], older_than=timedelta(days=30), now=clock.now())
            == 0
        )
    async with services.sessions() as s:
        assert (await queue.status(s, clock.now()))["counts"]["queued"] == 2

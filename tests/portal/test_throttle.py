"""Attempt counters: lock after the limit with doubling backoff, forget after the window."""

from __future__ import annotations

from datetime import timedelta

from gateway import throttle
from gateway.services import Services
from tests.support.world import FakeClock

POLICY = throttle.Policy(
    "signin", 3, timedelta(minutes=10), timedelta(minutes=1), timedelta(minutes=5)
)


async def test_backoff_doubles_up_to_the_cap_and_the_window_resets(
    services: Services, clock: FakeClock
) -> None:
    locks = []
    async with services.transaction() as s:
        for _ in range(8):
            until = await throttle.hit(s, POLICY, "k", clock.now())
            locks.append(None if until is None else (until - clock.now()).total_seconds() / 60)
    assert locks == [None, None, None, 1, 2, 4, 5, 5]
    clock.advance(minutes=6)
    async with services.transaction() as s:
        assert await throttle.locked_until(s, POLICY, "k", clock.now()) is None
        # Lock over but still inside the window: the next failure locks again at once.
        assert await throttle.hit(s, POLICY, "k", clock.now()) is not None
    clock.advance(minutes=11)
    async with services.transaction() as s:
        # Window over and lock expired: counting starts again.
        assert await throttle.hit(s, POLICY, "k", clock.now()) is None


async def test_purge_keeps_locked_and_recent_counters(services: Services, clock: FakeClock) -> None:
    async with services.transaction() as s:
        for _ in range(4):
            await throttle.hit(s, POLICY, "locked", clock.now())
        await throttle.hit(s, POLICY, "old", clock.now())
    clock.advance(seconds=50)
    async with services.transaction() as s:
        await throttle.hit(s, POLICY, "recent", clock.now())
        assert await throttle.purge_stale(s, clock.now(), timedelta(seconds=30)) == 1
    async with services.transaction() as s:
        assert await throttle.locked_until(s, POLICY, "locked", clock.now()) is not None

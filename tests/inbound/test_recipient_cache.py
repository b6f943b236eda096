"""The RCPT verdict cache: remembered for its TTL, never past the token's expiry, and small
under a steady stream of distinct addresses (expired entries are dropped, not kept until the
size cap pushes them out)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from gateway.inbound.routing import RecipientCache, Target

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def test_a_verdict_is_remembered_until_its_ttl():
    cache = RecipientCache(ttl_seconds=60)
    target = Target("reply", "clinic", "token", NOW + timedelta(days=1))
    cache.put("reply+a@r.example", target)
    assert cache.get("reply+a@r.example", NOW) == (True, target)
    assert cache.get("reply+b@r.example", NOW) == (False, None)


def test_a_yes_never_outlives_its_token():
    cache = RecipientCache(ttl_seconds=60)
    cache.put("reply+a@r.example", Target("reply", "clinic", "token", NOW))
    assert cache.get("reply+a@r.example", NOW) == (False, None)


def test_expired_entries_are_dropped_as_new_ones_arrive():
    cache = RecipientCache(ttl_seconds=0.05, size=10_000)
    for i in range(100):
        cache.put(f"reply+{i}@r.example", None)
    time.sleep(0.06)
    cache.put("reply+new@r.example", None)
    assert len(cache) == 1
    assert cache.get("reply+0@r.example", NOW) == (False, None)


def test_the_size_cap_holds():
    cache = RecipientCache(ttl_seconds=60, size=10)
    for i in range(50):
        cache.put(f"reply+{i}@r.example", None)
    assert len(cache) == 10
    assert cache.get("reply+49@r.example", NOW) == (True, None)

"""Soak, short form: ~12 s of steady load in and out against a real gateway process.

Same promises as the full run (``bench/soak.py``: 50/s each way for 10 minutes): p99
end-of-DATA to 250 under 1 s, memory growth after warm-up under 10 %, the queue drained within
2 minutes of the load stopping, and nothing lost, undelivered or duplicated without a crash.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.reliability.scenarios import SoakResult, run_soak

# Timing-bound: scripts/test runs these alone, after the parallel part.
pytestmark = pytest.mark.serial

SECONDS = float(os.environ.get("CAREBRIDGE_SOAK_SECONDS", "12"))
RATE = float(os.environ.get("CAREBRIDGE_SOAK_RATE", "50"))


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakResult]:
    workdir = tmp_path_factory.mktemp("soak")
    yield asyncio.run(
        run_soak(workdir, rate_in=RATE, rate_out=RATE, seconds=SECONDS, warmup=SECONDS / 3)
    )


def report(s: SoakResult) -> str:
    return "\n".join(s.lines())


def test_the_load_was_carried(soak: SoakResult) -> None:
    assert soak.accepted == int(RATE * SECONDS), report(soak)
    assert soak.enqueued == int(RATE * SECONDS), report(soak)
    # The pacing held: the run took about as long as planned (not a burst, not a crawl).
    assert SECONDS * 0.9 <= soak.seconds <= SECONDS * 1.5, report(soak)


def test_p99_end_of_data_to_250_under_one_second(soak: SoakResult) -> None:
    assert soak.p99 < 1.0, report(soak)


def test_memory_growth_after_warm_up_under_ten_percent(soak: SoakResult) -> None:
    assert soak.rss_start_kb > 0, report(soak)
    assert soak.rss_growth < 0.10, report(soak)


def test_queue_drains_within_two_minutes(soak: SoakResult) -> None:
    assert soak.drain_seconds < 120, report(soak)


def test_nothing_lost_undelivered_or_duplicated(soak: SoakResult) -> None:
    r = soak.reckoning
    assert r.lost == [] and r.never_delivered == [] and r.duplicates == 0, report(soak)

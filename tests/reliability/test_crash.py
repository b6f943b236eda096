"""Crash suite, short form: SIGKILL a live gateway under load in and out, then reckon.

One run (module fixture) of a few hundred messages each way with a few kills; each promise is
its own test so a report names exactly which one broke. Full size (10,000 in, 10,000 out,
200 kills): ``.venv/bin/python bench/crash.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.scenarios import CrashResult, run_crash

# Timing-bound: scripts/test runs these alone, after the parallel part.
pytestmark = pytest.mark.serial

INBOUND = int(os.environ.get("CAREBRIDGE_CRASH_IN", "200"))
OUTBOUND = int(os.environ.get("CAREBRIDGE_CRASH_OUT", "200"))
KILLS = int(os.environ.get("CAREBRIDGE_CRASH_KILLS", "3"))


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashResult]:
    workdir: Path = tmp_path_factory.mktemp("crash")
    # A plain (sync) fixture: no event loop is running yet, so the scenario gets its own.
    yield asyncio.run(run_crash(workdir, inbound=INBOUND, outbound=OUTBOUND, kills=KILLS))


def report(c: CrashResult) -> str:
    return "\n".join(c.lines())


def test_every_kill_happened_under_load(crash: CrashResult) -> None:
    assert crash.kills == KILLS, report(crash)
    assert crash.inbound_retries > 0, "no SMTP attempt ever hit a dead gateway: no real chaos"


def test_no_message_that_got_250_is_lost(crash: CrashResult) -> None:
    r = crash.reckoning
    assert r.accepted == INBOUND, report(crash)
    assert r.lost == [], report(crash)
    # Every stored message was processed to an end state, none left behind by a kill.
    assert r.inbound_states.get("received", 0) == 0, report(crash)


def test_every_notification_is_delivered(crash: CrashResult) -> None:
    r = crash.reckoning
    assert r.notifications >= OUTBOUND, report(crash)
    assert r.never_delivered == [], report(crash)
    assert set(r.notification_states) <= {"sent", "cancelled"}, report(crash)


def test_a_kill_adds_at_most_one_copy_of_any_notification(crash: CrashResult) -> None:
    assert crash.reckoning.max_copies <= 1 + crash.kills, report(crash)


# A kill re-sends only what the relay accepted since the last outcome commit: each outcome
# is committed the moment the relay answers (gateway/outbound/delivery.py).
def test_duplicates_at_most_one_per_kill(crash: CrashResult) -> None:
    assert crash.reckoning.duplicates <= crash.kills, report(crash)


def test_no_corrupt_rows_and_the_audit_chain_holds(crash: CrashResult) -> None:
    r = crash.reckoning
    assert r.integrity == "ok", report(crash)
    assert r.rows_decrypted > INBOUND, report(crash)
    assert r.audit_ok, report(crash)
    assert crash.cli_audit.startswith("exit 0: audit chain intact"), report(crash)

"""Scale-out, short form: three nodes on one PostgreSQL, the scheduler's leader killed.

Runs only with ``CAREBRIDGE_TEST_PG_URL`` (each run creates and drops its own database).
Full form with throughput figures: ``.venv/bin/python bench/scaleout.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.reliability.scaleout import PG_ENV, ScaleResult, run_scaleout

INBOUND = 200
pytestmark = [
    pytest.mark.serial,
    pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"scale-out needs PostgreSQL ({PG_ENV})"),
]


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleResult]:
    workdir = tmp_path_factory.mktemp("scale")
    yield asyncio.run(run_scaleout(workdir, inbound=INBOUND, outbound=INBOUND, rate=50))


def report(s: ScaleResult) -> str:
    return "\n".join(s.lines())


def test_nothing_lost_and_everything_delivered(scale: ScaleResult) -> None:
    r = scale.reckoning
    assert r.accepted == INBOUND and r.lost == [], report(scale)
    assert r.never_delivered == [], report(scale)
    assert r.audit_ok, report(scale)


def test_a_dead_nodes_stored_messages_are_processed_by_the_others(scale: ScaleResult) -> None:
    """Stored (250) by the killed node but not yet processed: a surviving node must finish
    them, or they wait for that node to come back, which in scale-out it may never do."""
    assert scale.reckoning.inbound_states.get("received", 0) == 0, report(scale)


def test_no_notification_sent_by_two_nodes(scale: ScaleResult) -> None:
    assert scale.reckoning.duplicates_without_reclaim == 0, report(scale)


def test_the_kill_re_sends_at_most_one_notification(scale: ScaleResult) -> None:
    """A message the relay accepted in the killed node's last milliseconds, before its outcome
    was committed, is sent again by a survivor (plain SMTP cannot tell a sender that died
    after the final dot whether it was taken). Outcomes are committed as the relay answers,
    so one kill re-sends at most the one commit in flight: at 50/s, one message at most."""
    assert scale.reckoning.duplicates <= 1, report(scale)


def test_the_scheduler_moves_to_a_surviving_node(scale: ScaleResult) -> None:
    assert scale.leader_after not in ("(none)", scale.killed), report(scale)
    assert scale.leaders_holding == 1, report(scale)

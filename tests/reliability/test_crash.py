"""Crash suite, short form: SIGKILL a live gateway under load in and out, then reckon.

Full size (10,000 in, 10,000 out, 200 kills): ``.venv/bin/python bench/crash.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.reliability.scenarios import run_crash

INBOUND = int(os.environ.get("CAREBRIDGE_CRASH_IN", "300"))
OUTBOUND = int(os.environ.get("CAREBRIDGE_CRASH_OUT", "300"))
KILLS = int(os.environ.get("CAREBRIDGE_CRASH_KILLS", "4"))


async def test_sigkill_under_load_loses_nothing(tmp_path: Path) -> None:
    result = await run_crash(tmp_path, inbound=INBOUND, outbound=OUTBOUND, kills=KILLS)
    r = result.reckoning
    report = "\n".join(result.lines())
    assert result.kills == KILLS, report
    assert r.accepted == INBOUND, report
    assert r.lost == [], report
    assert r.never_delivered == [], report
    assert r.notifications >= OUTBOUND, report
    assert r.duplicates <= result.kills, report
    assert r.integrity == "ok", report
    assert r.rows_decrypted > INBOUND, report
    assert r.audit_ok, report
    # Every message was processed to an end state (filed, quarantined, ...), none left behind.
    assert r.inbound_states.get("received", 0) == 0, report

#!/usr/bin/env python3
"""Crash suite at full size: 10,000 replies in over SMTP, 10,000 notifications out to a
loopback relay, while ``carebridge serve`` is SIGKILLed 200 times and restarted.

    .venv/bin/python bench/crash.py                      # full size (~10 minutes)
    .venv/bin/python bench/crash.py --inbound 1000 --outbound 1000 --kills 20

Prints the reckoning (lost after 250, never delivered, duplicates, integrity, audit) and exits
1 if a promise was broken. The work directory (database, node log) is kept for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.scenarios import run_crash


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--inbound", type=int, default=10_000)
    p.add_argument("--outbound", type=int, default=10_000)
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cb-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", flush=True)
    result = asyncio.run(
        run_crash(
            workdir,
            inbound=args.inbound,
            outbound=args.outbound,
            kills=args.kills,
            seed=args.seed,
            patients=50,
            drain_timeout=600,
        )
    )
    for line in result.lines():
        print(line)
    r = result.reckoning
    broken = []
    if r.lost:
        broken.append(f"{len(r.lost)} messages lost after 250")
    if r.never_delivered:
        broken.append(f"{len(r.never_delivered)} notifications never delivered")
    if r.duplicates > result.kills:
        broken.append(f"{r.duplicates} duplicates for {result.kills} kills")
    if r.integrity != "ok" or not r.audit_ok:
        broken.append("corrupt store or broken audit chain")
    print("RESULT: " + ("OK" if not broken else "BROKEN: " + "; ".join(broken)))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

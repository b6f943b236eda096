#!/usr/bin/env python3
"""Scale-out on PostgreSQL: three nodes, the scheduler's leader killed; then throughput of one
node against two nodes.

    .venv/bin/python bench/scaleout.py           # kill run 2,000 each way; throughput 1,000
    .venv/bin/python bench/scaleout.py --messages 500 --skip-kill

Uses $CAREBRIDGE_TEST_PG_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test) to
create a database per run and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.scaleout import run_scaleout, run_throughput


async def run(args: argparse.Namespace) -> int:
    base = Path(args.workdir or tempfile.mkdtemp(prefix="cb-scale-"))
    print(f"work directory: {base}", flush=True)
    broken = []
    if not args.skip_kill:
        d = base / "kill"
        d.mkdir(parents=True, exist_ok=True)
        result = await run_scaleout(d, inbound=args.load, outbound=args.load, rate=args.rate)
        print("== three nodes, scheduler leader SIGKILLed ==")
        for line in result.lines():
            print(line)
        r = result.reckoning
        if r.lost or r.never_delivered or r.duplicates_without_reclaim:
            broken.append("lost, undelivered, or sent by two nodes")
        if result.leader_after in ("(none)", result.killed):
            broken.append("the scheduler did not move")
    print("== throughput (unpaced; replies accepted over SMTP, notifications delivered) ==")
    for n in (1, 2):
        d = base / f"tp{n}"
        d.mkdir(parents=True, exist_ok=True)
        tp = await run_throughput(d, n, messages=args.messages)
        print(
            f"{n} node(s): {tp.accepted_per_s:.0f} replies/s accepted, "
            f"{tp.delivered_per_s:.0f} notifications/s delivered",
            flush=True,
        )
    print("RESULT: " + ("OK" if not broken else "BROKEN: " + "; ".join(broken)))
    return 1 if broken else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--load", type=int, default=2000, help="messages each way in the kill run")
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--messages", type=int, default=1000, help="per throughput measurement")
    p.add_argument("--skip-kill", action="store_true")
    p.add_argument("--workdir", default="")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

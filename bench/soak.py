#!/usr/bin/env python3
"""Soak: 50 replies/s in over SMTP and 50 notifications/s out for 10 minutes.

    .venv/bin/python bench/soak.py                 # full: 10 minutes at 50/s each way
    .venv/bin/python bench/soak.py --seconds 60    # a shorter look

Prints p50/p99 end-of-DATA-to-250 latency (after warm-up), resident memory of the gateway
after warm-up and at the end, and how long the queue took to drain once the load stopped.
Targets: p99 < 1 s, RSS growth < 10 %, drained within 120 s. Exit 1 if one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.scenarios import run_soak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate-in", type=float, default=50.0)
    p.add_argument("--rate-out", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cb-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", flush=True)
    result = asyncio.run(
        run_soak(
            workdir,
            rate_in=args.rate_in,
            rate_out=args.rate_out,
            seconds=args.seconds,
            warmup=min(args.warmup, args.seconds / 3),
        )
    )
    for line in result.lines():
        print(line)
    r = result.reckoning
    missed = []
    if result.p99 >= 1.0:
        missed.append(f"p99 {result.p99:.3f}s >= 1s")
    if result.rss_growth >= 0.10:
        missed.append(f"RSS grew {result.rss_growth * 100:.1f}%")
    if result.drain_seconds == float("inf"):
        missed.append("queue not drained within 120 s of the load stopping")
    elif result.drain_seconds > 120:
        missed.append(f"drain took {result.drain_seconds:.0f}s")
    if r.lost or r.never_delivered or r.duplicates:
        missed.append("lost, undelivered or duplicated mail")
    print("RESULT: " + ("OK" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

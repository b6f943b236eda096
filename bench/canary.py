#!/usr/bin/env python3
"""PHI canary suite at full size: canaries in every PHI field of 10,000 patients (about
110,000 records: every encrypted column of every table), then a scan of every table's raw
rows and of the SQLite file and its WAL, in several encodings.

    .venv/bin/python bench/canary.py                  # 10,000 patients
    .venv/bin/python bench/canary.py --patients 2000

The story flows (logs, metrics, web, CLI, SMTP to a sink) run in the CI suite:
``pytest tests/reliability/test_canary.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import db
from gateway.config import parse_config
from gateway.crypto import KeyRing
from gateway.services import open_services
from tests.reliability import plant
from tests.reliability.canary import Scan
from tests.reliability.scanning import scan_files, scan_tables, sqlite_files


async def run(patients: int, workdir: Path) -> int:
    url = f"sqlite+aiosqlite:///{workdir}/cb.db"
    await asyncio.to_thread(db.upgrade, url)
    services = await open_services(
        parse_config({"store": {"url": url}}), keyring=KeyRing.generate()
    )
    try:
        t0 = time.monotonic()
        planted = await plant.plant(services, patients)
        t1 = time.monotonic()
        gaps = await plant.coverage_gaps(services)
        scan = Scan()
        counts = await scan_tables(services, scan)
        files = sqlite_files(services)
        scan_files(scan, files)
        size_kb = sum(p.stat().st_size for p in files) // 1024  # before close: the WAL goes
        t2 = time.monotonic()
    finally:
        await services.close()
    print(f"planted {planted.records} records ({patients} patients) in {t1 - t0:.1f}s")
    print(
        f"encrypted columns: {len(plant.encrypted_columns())}; without a canary: {gaps or 'none'}"
    )
    print(
        f"scanned {sum(counts.values())} rows in {len(counts)} tables and "
        f"{size_kb} kB of database files in {t2 - t1:.1f}s"
    )
    print(f"canary hits: {len(scan.hits)}")
    for h in scan.hits[:20]:
        print(f"  {h}")
    ok = not gaps and not scan.hits and planted.records >= 10_000
    print("RESULT: " + ("OK" if ok else "LEAK OR GAP"))
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--patients", type=int, default=10_000)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cb-canary-"))
    return asyncio.run(run(args.patients, workdir))


if __name__ == "__main__":
    sys.exit(main())

"""Admin/ops benchmark: what a Prometheus scrape and the dashboard cost on a full queue.

On a temporary store (SQLite by default, or ``--store-url`` for PostgreSQL) with ``-n``
notifications spread over 10 clinics and every state, and as many inbound messages:

  (a) ``GET /metrics`` (the scrape-time gauges: queue by state and clinic, oldest age,
      quarantine, SLA breaches, undeliverable patients, DKIM keys), p50/p95 over 20 scrapes;
  (b) the 14-day series behind the dashboard charts (``dashboard.daily``), p50 over 5 runs.

Usage: ``.venv/bin/python bench/admin.py [-n 20000] [--store-url URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def main(n: int, store_url: str | None) -> None:
    import httpx
    from sqlalchemy import insert

    from gateway import db
    from gateway.admin import clinics, dashboard
    from gateway.config import parse_config
    from gateway.crypto import KeyRing
    from gateway.models import InboundMessage, Notification
    from gateway.models.outbound import NOTIFICATION_STATES
    from gateway.models.types import new_id
    from gateway.services import open_services
    from gateway.web.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-admin-"))
    url = store_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
    await asyncio.to_thread(db.upgrade, url)
    cfg = parse_config({"store": {"url": url}, "keys": {"file": str(tmp / "keys.json")}})
    services = await open_services(cfg, keyring=KeyRing.generate())
    now = datetime.now(UTC)
    try:
        async with services.transaction() as s:
            org = await clinics.get_or_create_org(s, "bench", "Bench", "bench")
            ids = [
                (await clinics.add_clinic(s, org=org, slug=f"c{i}", name="C", actor="b")).id
                for i in range(10)
            ]
        rows, inbound = [], []
        for i in range(n):
            created = now - timedelta(minutes=i % (14 * 24 * 60))
            state = NOTIFICATION_STATES[i % len(NOTIFICATION_STATES)]
            rows.append(
                {
                    "id": new_id(),
                    "clinic_id": ids[i % 10],
                    "kind": "new_message",
                    "recipient": "bench@example.org",
                    "state": state,
                    "created_at": created,
                    "next_attempt_at": created,
                    "sent_at": created + timedelta(seconds=2 + i % 30) if state == "sent" else None,
                    "last_error": f"451 4.7.1 try later ({i % 7})" if state == "deferred" else None,
                    "context": {},
                }
            )
            inbound.append(
                {
                    "id": new_id(),
                    "source": "smtp",
                    "raw": b"x",
                    "state": "filed",
                    "clinic_id": ids[i % 10],
                    "received_at": created,
                    "auth": {},
                }
            )
        for start in range(0, n, 2000):
            async with services.transaction() as s:
                await s.execute(insert(Notification), rows[start : start + 2000])
                await s.execute(insert(InboundMessage), inbound[start : start + 2000])

        app = create_app(services)
        transport = httpx.ASGITransport(app=app)
        scrapes = []
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            for _ in range(20):
                t = time.perf_counter()
                r = await client.get("/metrics")
                scrapes.append(time.perf_counter() - t)
                assert r.status_code == 200
        series = []
        for _ in range(5):
            t = time.perf_counter()
            async with services.sessions() as s:
                await dashboard.daily(s, dashboard.Scope(), now)
            series.append(time.perf_counter() - t)
        scrapes.sort()
        backend = url.split(":", 1)[0]
        print(f"store {backend}, {n} notifications + {n} inbound over 10 clinics")
        print(
            f"GET /metrics: p50 {statistics.median(scrapes) * 1000:.1f} ms, "
            f"p95 {scrapes[int(0.95 * len(scrapes)) - 1] * 1000:.1f} ms"
        )
        print(f"dashboard 14-day series: p50 {statistics.median(series) * 1000:.1f} ms")
    finally:
        await services.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--store-url")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.store_url))

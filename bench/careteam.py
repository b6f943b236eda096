"""Care-team benchmark: how fast requests are opened, SLA timers swept and the API answers.

On a temporary store (SQLite by default, or ``--store-url`` for PostgreSQL):

  (a) ``threads.create_thread``: routing, SLA deadline, encrypted message, audit, coalesced
      staff digest and the patient's acknowledgement, one transaction each;
  (b) one scheduler tick with every thread past its deadline: breach notices to the
      supervisor and the patient, in batches of ``escalation.BATCH``;
  (c) ``POST /api/v1/patients/{id}/messages`` through the real ASGI app (httpx), with an
      ``Idempotency-Key`` each, and the p50/p95 latency.

Usage: ``.venv/bin/python bench/careteam.py [-n 500] [--store-url URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def main(n: int, store_url: str | None) -> None:
    import httpx

    from gateway import db
    from gateway.admin import apikeys, clinics
    from gateway.careteam import staff, threads
    from gateway.config import parse_config
    from gateway.crypto import KeyRing
    from gateway.models import PoolMember
    from gateway.portal import patients
    from gateway.scheduler import SchedulerPart
    from gateway.services import open_services
    from gateway.web.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-careteam-"))
    url = store_url or f"sqlite+aiosqlite:///{tmp}/cb.db"
    await asyncio.to_thread(db.upgrade, url)
    cfg = parse_config({"store": {"url": url}, "log": {"level": "WARNING"}}, base_dir=str(tmp))
    services = await open_services(cfg, keyring=KeyRing.generate())
    try:
        async with services.transaction() as s:
            org = await clinics.get_or_create_org(s, "bench", "Bench", "bench")
            clinic = await clinics.add_clinic(
                s,
                org=org,
                slug="bench",
                name="Bench",
                reply_domain="r.bench.example",
                actor="bench",
            )
            sup = await staff.add_staff(
                s,
                services.keyring,
                clinic=clinic,
                name="Sup",
                email="sup@bench.example",
                role="provider",
                password=None,
                actor="bench",
            )
            pat = (
                await patients.enroll(
                    s,
                    services.keyring,
                    clinic=clinic,
                    given_name="P",
                    family_name="Q",
                    date_of_birth=date(1980, 1, 1),
                    email="p@example.org",
                    source="desk",
                    actor="bench",
                )
            ).patient
            for pool_id in {r.pool.id for r in await _rules(s, clinic.id)}:
                s.add(PoolMember(pool_id=pool_id, staff_id=sup.id))
            key = await apikeys.create(
                s,
                name="bench",
                role="integration",
                org_slug=None,
                now=services.clock.now(),
                actor="bench",
            )

        kinds = ["medication_renewal", "appointment", "question", "immunization_record"]
        t0 = time.perf_counter()
        for i in range(n):
            async with services.transaction() as s:
                await threads.create_thread(
                    s,
                    services,
                    patient=pat,
                    clinic=clinic,
                    request_type=kinds[i % 4],
                    subject="bench",
                    body="bench body " * 20,
                    urgent=i % 10 == 0,
                    actor="bench",
                )
        created = time.perf_counter() - t0
        print(f"(a) create_thread: {n} in {created:.2f}s = {n / created:.0f}/s")

        class Later:
            def now(self):  # type: ignore[no-untyped-def]
                return services.clock.now() + timedelta(days=10)

        later = type(services)(**{**services.__dict__, "clock": Later()})
        part = SchedulerPart(later)
        t0 = time.perf_counter()
        breached = 0
        while True:
            result = await part.tick()
            breached += result.breached
            if result.breached == 0:
                break
        swept = time.perf_counter() - t0
        await part.stop()
        print(f"(b) SLA sweep: {breached} breaches in {swept:.2f}s = {breached / swept:.0f}/s")

        transport = httpx.ASGITransport(app=create_app(services))
        lat = []
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench/api/v1",
            headers={"Authorization": f"Bearer {key.value}"},
        ) as api:
            for i in range(n):
                t = time.perf_counter()
                r = await api.post(
                    f"/patients/{pat.id}/messages",
                    json={"subject": "s", "body": "b"},
                    headers={"Idempotency-Key": f"bench-{i}"},
                )
                lat.append(time.perf_counter() - t)
                assert r.status_code == 201, r.text
        q = statistics.quantiles(lat, n=20)
        print(
            f"(c) API POST messages: {n} at {n / sum(lat):.0f}/s; "
            f"p50 {statistics.median(lat) * 1000:.1f} ms, p95 {q[18] * 1000:.1f} ms"
        )
    finally:
        await services.close()


async def _rules(s, clinic_id):  # type: ignore[no-untyped-def]
    from gateway.careteam import pools

    return await pools.rules_of(s, clinic_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--store-url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.store_url))

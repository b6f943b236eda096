"""Online enrolment timing: does the answer's latency tell an existing account from a new one?

Usage: ``.venv/bin/python bench/portal_enrol.py [-n 40]``

The page is the same for everyone (tests check that); this measures the other channel, time.
For each of three cases it POSTs ``/enrol`` through the real ASGI app on a fresh SQLite store
and prints the median and p90 latency: a new person (enrol + invitation), an existing pending
account (invitation again) and an existing active account (audit only). Each attempt uses its
own client address so the rate limit does not interfere.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def main(n: int) -> None:
    import httpx

    from gateway import db
    from gateway.admin import clinics
    from gateway.config import parse_config
    from gateway.crypto import KeyRing
    from gateway.portal import patients
    from gateway.services import open_services
    from gateway.web.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-enrol-"))
    url = f"sqlite+aiosqlite:///{tmp}/cb.db"
    await asyncio.to_thread(db.upgrade, url)
    cfg = parse_config(
        {"store": {"url": url}, "keys": {"file": str(tmp / "k.json")}, "log": {"level": "WARNING"}},
        base_dir=str(tmp),
    )
    services = await open_services(cfg, keyring=KeyRing.generate())
    async with services.transaction() as s:
        org = await clinics.get_or_create_org(s, "bench", "Bench", "bench")
        clinic = await clinics.add_clinic(s, org=org, slug="bench", name="Bench", actor="bench")
        for i in range(n):
            for state in ("pending", "active"):
                r = await patients.enroll(
                    s,
                    services.keyring,
                    clinic=clinic,
                    given_name="A",
                    family_name="B",
                    date_of_birth=date(1980, 1, 1),
                    email=f"{state}{i}@example.org",
                    source="desk",
                    actor="bench",
                )
                if state == "active":
                    r.patient.email_verified_at = r.patient.terms_agreed_at = services.clock.now()
                    r.patient.status = "active"
    app = create_app(services)
    timings: dict[str, list[float]] = {"new": [], "pending": [], "active": []}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        page = await c.get("/enrol")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        for i in range(n):
            for case in ("new", "pending", "active"):
                transport = httpx.ASGITransport(app=app, client=(f"10.0.{i}.{len(case)}", 1))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://b", cookies=c.cookies
                ) as one:
                    data = {
                        "csrf_token": token,
                        "code": clinic.enrolment_code,
                        "given_name": "X",
                        "family_name": "Y",
                        "date_of_birth": "1990-01-01",
                        "email": f"{case}{i}@example.org",
                    }
                    start = time.perf_counter()
                    r = await one.post("/enrol", data=data)
                    timings[case].append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 303, r.status_code
    await services.close()
    for case, values in timings.items():
        values.sort()
        p90 = values[int(len(values) * 0.9) - 1]
        print(f"{case:8s} median {statistics.median(values):6.2f} ms   p90 {p90:6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40)
    asyncio.run(main(parser.parse_args().n))

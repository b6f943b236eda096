"""Outbound benchmark: notifications/s and enqueue-to-accepted latency, against a baseline.

Usage: ``.venv/bin/python bench/outbound.py [-n 2000] [--store-url URL] [--rate R]``

1. An aiosmtpd sink runs in a separate process (its own core) on loopback.
2. Baseline: one bare aiosmtplib connection sends N pre-rendered messages in a loop.
3. carebridge: N notifications (request acknowledgements, which mint three tokens each)
   are enqueued through ``notify.enqueue``, then the real delivery part (claim, tokens,
   render, dual DKIM sign, aiosmtplib through ``[delivery] relay``, record) sends them to
   the same sink. notifications/s is N over the time from starting the part to the last
   250; latency is each row's created_at to its 250 (a burst: it includes queueing).
   With ``--rate R`` the producer instead runs beside the workers at R a second, which
   gives the latency of a gateway below saturation.
4. Prints notifications/s, p50/p99 enqueue-to-accepted latency, the baseline (measured
   before and after, averaged) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINK_CODE = r"""
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Accepted"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="sink.bench", data_size_limit=None), "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_sink() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK_CODE], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def baseline(port: int, messages: list[bytes]) -> float:
    """A bare aiosmtplib loop on one connection: the floor any gateway pays for SMTP."""
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    started, cpu = time.perf_counter(), cpu_seconds()
    for i, data in enumerate(messages):
        await client.sendmail("bounce@bench.example", [f"p{i}@patients.example"], data)
    elapsed = time.perf_counter() - started
    BASELINE_CPU.append((cpu_seconds() - cpu) / len(messages))
    await client.quit()
    return len(messages) / elapsed


BASELINE_CPU: list[float] = []


def cpu_seconds() -> float:
    """CPU time of this process, all threads (aiosqlite works in one): unlike wall time,
    it does not grow when other programs load the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from gateway import db
    from gateway.admin import clinics
    from gateway.config import parse_config
    from gateway.crypto import KeyRing
    from gateway.models import Notification
    from gateway.outbound import dkim
    from gateway.outbound.delivery import DeliveryPart
    from gateway.outbound.notify import Kind, Notice, enqueue
    from gateway.portal import patients
    from gateway.services import open_services

    sink, port = start_sink()
    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-"))
    url = args.store_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
    scratch = None
    if url.startswith("postgresql"):
        # A database of its own, dropped afterwards: runs never see each other's rows.
        scratch = f"cb_bench_{os.urandom(4).hex()}"
        await _pg_admin(url, f'CREATE DATABASE "{scratch}"')
        url = url.rsplit("/", 1)[0] + "/" + scratch
    try:
        await asyncio.to_thread(db.upgrade, url)
        cfg = parse_config(
            {
                "store": {"url": url},
                "delivery": {
                    "relay": f"127.0.0.1:{port}",
                    "maildir": "",
                    "workers": args.workers,
                    "per_domain_concurrency": args.concurrency,
                    "claim_batch": args.batch,
                    "poll_seconds": 0.05,
                },
                "log": {"level": "WARNING"},
            },
            base_dir=str(tmp),
        )
        services = await open_services(cfg, keyring=KeyRing.generate())
        async with services.transaction() as s:
            org = await clinics.get_or_create_org(s, "bench", "Bench", "bench")
            clinic = await clinics.add_clinic(
                s,
                org=org,
                slug="bench",
                name="Bench Clinic",
                reply_domain="reply.bench.example",
                sending_domain="bench.example",
                actor="bench",
            )
            await dkim.ensure_domain_keys(s, clinic, now=services.clock.now())
            people = []
            for i in range(50):
                result = await patients.enroll(
                    s,
                    services.keyring,
                    clinic=clinic,
                    given_name="Bench",
                    family_name=f"P{i}",
                    date_of_birth=date(1980, 1, 1),
                    email=f"p{i}@patients.example",
                    source="cli",
                    actor="bench",
                )
                people.append(result.patient)

        part = DeliveryPart(services)
        # Baseline messages: what the gateway sends, rendered and signed once, up front.
        sample = await _one_rendered(services, clinic, people[0])
        # Measured before and after the gateway's run, and averaged: other load on the
        # machine drifts during a run, and the ratio should compare like with like.
        base_before = await baseline(port, [sample] * args.n)

        async def produce() -> None:
            interval = 1 / args.rate if args.rate else 0.0
            batch = 1 if args.rate else 50
            for start in range(0, args.n, batch):
                async with services.transaction() as s:
                    for i in range(start, min(args.n, start + batch)):
                        p = people[i % len(people)]
                        await enqueue(
                            s,
                            services.keyring,
                            notice=Notice(
                                kind=Kind.REQUEST_RECEIVED,
                                thread_id=f"{i:032x}",
                                expected_reply_at=datetime(2030, 1, 1, tzinfo=UTC),
                            ),
                            clinic_id=clinic.id,
                            recipient=p.email,
                            now=services.clock.now(),
                            patient_id=p.id,
                        )
                part.wake()
                if interval:
                    await asyncio.sleep(interval)

        before = sum(
            services.metrics.deliveries.labels(outcome=o)._value.get() for o in ("sent", "bounced")
        )
        run_started = datetime.now(UTC)
        enqueue_rate = 0.0
        if args.rate:
            # Paced: the producer runs beside the workers, as requests arrive in service.
            started, cpu = time.perf_counter(), cpu_seconds()
            await part.start()
            await produce()
        else:
            # Burst: N notifications are queued, then the workers drain the queue.
            enqueue_started = time.perf_counter()
            await produce()
            enqueue_rate = args.n / (time.perf_counter() - enqueue_started)
            started, cpu = time.perf_counter(), cpu_seconds()
            await part.start()
        # Watch the part's own counters, not the store: polling the database would compete
        # with the workers for SQLite's write lock.
        counters = [services.metrics.deliveries.labels(outcome=o) for o in ("sent", "bounced")]
        deadline = time.perf_counter() + 600
        while sum(c._value.get() for c in counters) < args.n + before:
            if time.perf_counter() > deadline:
                print("gave up waiting after 600 s", file=sys.stderr)
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu_per = (cpu_seconds() - cpu) / args.n
        await part.stop()
        base_after = await baseline(port, [sample] * args.n)
        base_rate = (base_before + base_after) / 2
        async with services.sessions() as s:
            rows = (
                await s.execute(
                    select(Notification.state, Notification.created_at, Notification.sent_at).where(
                        Notification.created_at >= run_started, Notification.state == "sent"
                    )
                )
            ).all()
        await services.close()
    finally:
        sink.terminate()
        sink.wait()
        if scratch is not None:
            await _pg_admin(args.store_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

    sent = [r for r in rows if r[0] == "sent"]
    latencies = [(r[2] - r[1]).total_seconds() * 1000 for r in sent]
    rate = len(sent) / elapsed
    mode = f"paced at {args.rate}/s" if args.rate else f"burst (enqueued at {enqueue_rate:.0f}/s)"
    store = "postgresql" if url.startswith("postgresql") else "sqlite"
    print(
        f"outbound bench: {args.n} notifications, {mode}, store {store}, "
        f"{args.workers} workers x batch {args.batch}, dual DKIM (ed25519 + rsa-2048)"
    )
    print(
        f"carebridge:  {rate:8.1f} notifications/s  "
        f"(sent {len(sent)}, not sent {args.n - len(sent)})"
    )
    print(
        f"latency:     p50 {statistics.median(latencies):8.1f} ms   "
        f"p99 {percentile(latencies, 99):8.1f} ms  (enqueue -> 250 from the relay)"
    )
    print(
        f"baseline:    {base_rate:8.1f} messages/s (bare aiosmtplib loop, same sink, same run; "
        f"{base_before:.0f} before, {base_after:.0f} after)"
    )
    if args.rate:
        print("ratio:       n/a: with --rate the producer sets the pace; run without it")
        return
    print(f"ratio:       {rate / base_rate:8.3f}  (target >= 0.25)")
    base_cpu = statistics.mean(BASELINE_CPU)
    print(
        f"cpu:         {cpu_per * 1000:8.2f} ms a notification, baseline {base_cpu * 1000:.2f} ms "
        f"a message (CPU of this process, all threads; insensitive to other load)"
    )


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class _Capture:
    """A transport that keeps what it is given: the baseline's pre-rendered message."""

    def __init__(self) -> None:
        self.data = b""

    async def send(self, envelope: Any) -> None:
        self.data = envelope.data

    async def close(self) -> None:
        return None


async def _one_rendered(services: Any, clinic: Any, patient: Any) -> bytes:
    """One real notification built by the gateway's own path (claim, tokens, render, sign)."""
    from gateway.outbound.delivery import DeliveryPart
    from gateway.outbound.notify import Kind, Notice, enqueue

    async with services.transaction() as s:
        await enqueue(
            s,
            services.keyring,
            notice=Notice(kind=Kind.REQUEST_RECEIVED, thread_id="0" * 32),
            clinic_id=clinic.id,
            recipient=patient.email,
            now=services.clock.now(),
            patient_id=patient.id,
        )
    capture = _Capture()
    await DeliveryPart(services, transport=capture).run_once("bench-sample")
    return capture.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="notifications (default 2000)")
    parser.add_argument("--store-url", default=os.environ.get("CAREBRIDGE_BENCH_STORE", ""))
    parser.add_argument("--rate", type=float, default=0.0, help="pace the producer (per s)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8, help="per-domain limit")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The crash, soak and scale-out scenarios, sized by their callers.

The tests in this folder run them small (CI); ``bench/crash.py``, ``bench/soak.py`` and
``bench/scaleout.py`` run them at full size and print the figures. Each scenario uses real
``carebridge serve`` processes, real SMTP in (aiosmtplib) and out (the loopback sink acting as
the relay), and ends with :func:`harness.reckon`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.dns import LoopbackDns
from tests.reliability.harness import (
    InboundLoad,
    NotificationLoad,
    Reckoning,
    chaos,
    open_store,
    reckon,
    wait_drained,
)
from tests.reliability.procs import Node, prepare_store
from tests.reliability.scanning import run_cli
from tests.reliability.sink import Sink


@dataclass
class CrashResult:
    reckoning: Reckoning
    kills: int
    seconds: float
    inbound_retries: int
    failures: dict[str, int] = field(default_factory=dict)
    cli_audit: str = ""  # what `carebridge audit verify` printed after the run

    def lines(self) -> list[str]:
        return [
            f"kills: {self.kills}; wall time: {self.seconds:.1f}s; "
            f"SMTP attempts that did not get 250 and were retried: {self.inbound_retries}",
            f"client-side failures seen: {self.failures}",
            *self.reckoning.lines(),
            f"carebridge audit verify: {self.cli_audit}",
        ]


async def run_crash(
    workdir: Path,
    *,
    inbound: int,
    outbound: int,
    kills: int,
    up: tuple[float, float] = (0.3, 1.5),
    patients: int = 20,
    seed: int = 1,
    drain_timeout: float = 120.0,
) -> CrashResult:
    """Load in and out while one node is SIGKILLed ``kills`` times; then reckon."""
    rng = random.Random(seed)
    store_url = f"sqlite+aiosqlite:///{workdir}/cb.db"
    keys_file, seeded = await prepare_store(workdir, store_url, patients)
    sink = await Sink().start()
    dns = LoopbackDns().start()
    # A short lease, so rows a killed worker had claimed are retried within seconds. The lease
    # must outlast a send (delivery refuses to start one within timeout_seconds of expiry),
    # so the send timeout shrinks with it: the relay is on loopback.
    fast = {"delivery": {"lease_seconds": 8, "timeout_seconds": 3}}
    node = Node("node1", workdir, store_url, keys_file, sink.address, dns.nameserver, fast)
    services = await open_store(store_url, keys_file)
    started = time.monotonic()
    try:
        await node.start()
        # Pace the load so it spans the kills (about one second per cycle, start-up included).
        span = max(2.0, kills * (sum(up) / 2 + 0.8))
        load_in = InboundLoad([node], seeded, inbound, rate=inbound / span, concurrency=8)
        load_out = NotificationLoad(services, seeded, outbound, rate=outbound / span)
        done = asyncio.Event()

        async def loads() -> None:
            await asyncio.gather(load_in.run(), load_out.run())
            done.set()

        await asyncio.gather(loads(), chaos(node, kills, rng, up=up, done=done))
        await wait_drained(services, drain_timeout)
        await node.stop()
        result = await reckon(services, set(load_in.accepted), [sink])
        verify = await asyncio.to_thread(run_cli, node.config_path, "audit", "verify")
        return CrashResult(
            result,
            node.kills,
            time.monotonic() - started,
            load_in.attempts - len(load_in.accepted) - len(load_in.refused),
            dict(load_in.failures),
            f"exit {verify.returncode}: {(verify.stdout + verify.stderr).strip()[:200]}",
        )
    finally:
        await node.kill()
        await services.close()
        await sink.stop()
        dns.stop()


@dataclass
class SoakResult:
    seconds: float
    accepted: int
    enqueued: int
    p50: float
    p99: float
    rss_start_kb: int
    rss_end_kb: int
    drain_seconds: float
    reckoning: Reckoning

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kb - self.rss_start_kb) / max(1, self.rss_start_kb)

    def lines(self) -> list[str]:
        return [
            f"duration: {self.seconds:.0f}s; accepted in: {self.accepted}; queued out: "
            f"{self.enqueued}",
            f"end-of-DATA to 250: p50 {self.p50 * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms",
            f"RSS after warm-up {self.rss_start_kb} kB, at the end {self.rss_end_kb} kB "
            f"(growth {self.rss_growth * 100:.1f}%)",
            (
                f"queue drained {self.drain_seconds:.1f}s after the load stopped"
                if self.drain_seconds != float("inf")
                else "queue NOT drained within the drain window (see the states below)"
            ),
            *self.reckoning.lines(),
        ]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_soak(
    workdir: Path,
    *,
    rate_in: float,
    rate_out: float,
    seconds: float,
    warmup: float,
    patients: int = 50,
    drain_timeout: float = 120.0,
) -> SoakResult:
    """Steady load in and out; latency, memory after warm-up, and the drain afterwards."""
    store_url = f"sqlite+aiosqlite:///{workdir}/cb.db"
    keys_file, seeded = await prepare_store(workdir, store_url, patients)
    sink = await Sink().start()
    dns = LoopbackDns().start()
    node = Node("soak", workdir, store_url, keys_file, sink.address, dns.nameserver)
    services = await open_store(store_url, keys_file)
    try:
        await node.start()
        pid = node.pid()
        assert pid is not None
        n_in, n_out = int(rate_in * seconds), int(rate_out * seconds)
        load_in = InboundLoad([node], seeded, n_in, rate=rate_in, concurrency=16)
        load_out = NotificationLoad(services, seeded, n_out, rate=rate_out)
        rss: dict[str, int] = {}

        async def sample() -> None:
            await asyncio.sleep(warmup)
            rss["start"] = rss_kb(pid)

        t0 = time.monotonic()
        await asyncio.gather(load_in.run(), load_out.run(), sample())
        rss["end"] = rss_kb(pid)
        elapsed = time.monotonic() - t0
        # Not strict: a backlog left after the drain window is a finding to print, not a crash.
        drain = await wait_drained(services, drain_timeout, strict=False)
        await node.stop()
        # Latency after warm-up only: start-up effects are not what a soak measures.
        steady = [
            lat
            for mid, lat in load_in.accepted.items()
            if load_in.accepted_at[mid] - (time.time() - (time.monotonic() - t0)) >= warmup
        ]
        steady = steady or list(load_in.accepted.values())
        result = await reckon(services, set(load_in.accepted), [sink])
        return SoakResult(
            seconds=elapsed,
            accepted=len(load_in.accepted),
            enqueued=len(load_out.enqueued),
            p50=percentile(steady, 50),
            p99=percentile(steady, 99),
            rss_start_kb=rss.get("start", 0),
            rss_end_kb=rss["end"],
            drain_seconds=drain,
            reckoning=result,
        )
    finally:
        await node.kill()
        await services.close()
        await sink.stop()
        dns.stop()

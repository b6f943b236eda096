"""Scale-out: several ``carebridge serve`` nodes on one PostgreSQL database.

:func:`run_scaleout` spreads SMTP load over three nodes and the notification queue over their
delivery workers, SIGKILLs the node that holds the scheduler's leadership part-way through,
and checks that nothing was lost, that no row was sent by two nodes, and that another node
took the scheduler over. :func:`run_throughput` measures how many replies per second one
node and two nodes accept, and how many notifications per second they deliver.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text

from gateway.models import Notification
from gateway.services import Services
from tests.reliability.dns import LoopbackDns
from tests.reliability.harness import (
    InboundLoad,
    NotificationLoad,
    Reckoning,
    open_store,
    reckon,
    wait_drained,
)
from tests.reliability.procs import Node, prepare_store
from tests.reliability.sink import Sink

PG_ENV = "CAREBRIDGE_TEST_PG_URL"
LEADER_LOCK = 0x5C4ED01E  # gateway.scheduler.LEADER_LOCK
TAKEN = "scheduler leadership taken"


def pg_base() -> str:
    return os.environ.get(PG_ENV) or "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_base().replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def own_database() -> AsyncIterator[str]:
    """A database of this run's own, dropped afterwards."""
    name = f"cb_scale_{secrets.token_hex(5)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_base().rsplit("/", 1)[0] + "/" + name
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _nodes(n: int, workdir: Path, url: str, keys: Path, relay: str, ns: str) -> list[Node]:
    extra = {
        "delivery": {"lease_seconds": 8, "timeout_seconds": 3},  # lease > send timeout
        "scheduler": {"tick_seconds": 0.5},
        # A dead node's stored messages are adopted within seconds (default: a minute).
        "inbound": {"sweep_seconds": 1, "adopt_after_seconds": 3},
        "store": {"pool_size": 5},
        "log": {"level": "INFO"},
    }
    return [Node(f"node{i + 1}", workdir, url, keys, relay, ns, extra) for i in range(n)]


def leader_of(nodes: list[Node]) -> Node | None:
    """The node that took the scheduler's leadership most recently, from the nodes' logs."""
    best: tuple[int, Node] | None = None
    for node in nodes:
        log = node.tail(10_000_000)
        at = log.rfind(TAKEN)
        if at >= 0 and node.proc is not None and (best is None or at > best[0]):
            best = (at, node)
    return best[1] if best else None


async def leader_count(services: Services) -> int:
    """How many sessions hold the scheduler's advisory lock (one, or the election is broken)."""
    async with services.engine.connect() as conn:
        return int(
            await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = :k"
                ),
                {"k": LEADER_LOCK},
            )
            or 0
        )


@dataclass
class ScaleResult:
    reckoning: Reckoning
    killed: str
    leader_before: str
    leader_after: str
    leaders_holding: int

    def lines(self) -> list[str]:
        return [
            f"scheduler leader before the kill: {self.leader_before}; killed: {self.killed}; "
            f"leader afterwards: {self.leader_after}; advisory locks held: "
            f"{self.leaders_holding}",
            *self.reckoning.lines(),
        ]


async def _wait_for(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return False


async def run_scaleout(
    workdir: Path, *, inbound: int, outbound: int, rate: float, patients: int = 20
) -> ScaleResult:
    async with own_database() as url:
        keys, seeded = await prepare_store(workdir, url, patients)
        sink = await Sink().start()
        dns = LoopbackDns().start()
        nodes = _nodes(3, workdir, url, keys, sink.address, dns.nameserver)
        services = await open_store(url, keys)
        try:
            await asyncio.gather(*(n.start() for n in nodes))
            await _wait_for(lambda: leader_of(nodes) is not None, 20)
            before = leader_of(nodes)
            assert before is not None, "no node took the scheduler"
            load_in = InboundLoad(nodes, seeded, inbound, rate=rate, concurrency=9)
            load_out = NotificationLoad(services, seeded, outbound, rate=rate)

            async def kill_leader() -> None:
                # A third of the way through, with work in flight everywhere.
                await asyncio.sleep(inbound / rate / 3)
                await before.kill()

            await asyncio.gather(load_in.run(), load_out.run(), kill_leader())
            moved = await _wait_for(lambda: (leader_of(nodes) or before) is not before, 30)
            after = leader_of(nodes) if moved else None
            # Not strict: what a dead node left behind is what this run is here to find.
            await wait_drained(services, 10, strict=False)
            holding = await leader_count(services)
            for n in nodes:
                await n.stop()
            result = await reckon(services, set(load_in.accepted), [sink])
            return ScaleResult(
                result,
                before.name,
                before.name,
                after.name if after else "(none)",
                holding,
            )
        finally:
            for n in nodes:
                await n.kill()
            await services.close()
            await sink.stop()
            dns.stop()


@dataclass
class Throughput:
    nodes: int
    accepted_per_s: float
    delivered_per_s: float


async def run_throughput(workdir: Path, nodes_n: int, *, messages: int) -> Throughput:
    """Unpaced: replies in over SMTP (16 connections), then a burst of notifications out."""
    async with own_database() as url:
        keys, seeded = await prepare_store(workdir, url, 20)
        sink = await Sink().start()
        dns = LoopbackDns().start()
        nodes = _nodes(nodes_n, workdir, url, keys, sink.address, dns.nameserver)
        for n in nodes:
            n.extra["log"] = {"level": "WARNING"}
        services = await open_store(url, keys)
        try:
            await asyncio.gather(*(n.start() for n in nodes))
            load_in = InboundLoad(nodes, seeded, messages, concurrency=16)
            t0 = time.monotonic()
            await load_in.run()
            accepted = len(load_in.accepted) / (time.monotonic() - t0)
            await wait_drained(services, 300)
            async with services.sessions() as s:
                base = await s.scalar(select(func.count()).select_from(Notification))
            load_out = NotificationLoad(services, seeded, messages, batch=50)
            t1 = time.monotonic()
            await load_out.run()
            await wait_drained(services, 300)
            delivered = (messages + 0 * (base or 0)) / (time.monotonic() - t1)
            return Throughput(nodes_n, accepted, delivered)
        finally:
            for n in nodes:
                await n.kill()
            await services.close()
            await sink.stop()
            dns.stop()

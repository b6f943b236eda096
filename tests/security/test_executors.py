"""Slow or hostile work cannot starve anyone else (issue 14).

Password hashing, mail parsing and DKIM/SPF each have their own bounded pool: a parse past
its deadline is killed (its worker process is gone) and the next parse gets a fresh worker;
a flood of hostile parses leaves the argon2 threads free; one message's DNS lookups share a
budget, so a nameserver that never answers costs that budget and no more, however many
DKIM signatures the message carries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator

import dkim
import pytest

from gateway.config import Config
from gateway.executors import DeadlineExceeded, ProcessPool
from gateway.inbound import auth
from gateway.inbound.auth import ReceivedEnvelope
from gateway.inbound.parsing import parse_mail
from gateway.outbound.dkim import generate_key
from gateway.passwords import hash_password, verify_password
from gateway.services import Services
from tests.support.hostile import hostile_from

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:multiprocessing")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A killed child that is not yet reaped is a zombie: as good as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


async def test_a_parse_past_its_deadline_is_killed_and_the_next_parse_works() -> None:
    pool = ProcessPool("parse", workers=1, max_queue=4)
    try:
        plain = b"From: Pat <pat@example.org>\r\nSubject: hi\r\n\r\nhello\r\n"
        first = await pool.run(parse_mail, plain, None, deadline=30)
        assert first.sender is not None and first.sender.address == "pat@example.org"
        (worker,) = pool.pids

        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await pool.run(parse_mail, hostile_from(62_000, "x@example.org"), None, deadline=1.0)
        assert time.monotonic() - started < 10  # not the minutes the parse would take
        assert _gone(worker) and pool.pids == set() and pool.killed == 1

        after = await pool.run(parse_mail, plain, None, deadline=30)
        assert after == first
        (fresh,) = pool.pids
        assert fresh != worker
    finally:
        pool.close()
    assert _gone(fresh)


async def test_the_argon2_pool_is_not_the_parse_pool_and_stays_free_under_a_parse_flood(
    services: Services,
) -> None:
    ex = services.executors
    assert len({id(ex.passwords), id(ex.parse), id(ex.auth)}) == 3
    stored = await ex.passwords.run(hash_password, "correct horse battery staple")
    hostile = hostile_from(62_000, "postmaster@example.org")
    flood = [
        asyncio.ensure_future(ex.parse.run(parse_mail, hostile, None, deadline=8.0))
        for _ in range(2 * ex.parse.workers)
    ]
    try:
        await asyncio.sleep(1.0)  # the parse workers are busy, and more parses are queued
        assert not any(f.done() for f in flood)
        started = time.monotonic()
        ok = await ex.passwords.run(verify_password, stored, "correct horse battery staple")
        elapsed = time.monotonic() - started
        name = await ex.passwords.run(lambda: threading.current_thread().name)
    finally:
        for f in flood:
            f.cancel()
    assert ok and elapsed < 2.0, elapsed
    assert name.startswith("passwords")
    await asyncio.gather(*flood, return_exceptions=True)


@pytest.fixture
def silent_dns() -> Iterator[tuple[int, list[bytes]]]:
    """A nameserver that reads every query and never answers; yields (port, queries)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    queries: list[bytes] = []
    stop = threading.Event()

    def drop() -> None:
        while not stop.is_set():
            try:
                queries.append(sock.recvfrom(4096)[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1], queries
    finally:
        stop.set()
        t.join(5)
        sock.close()


def _signed(domains: list[str]) -> bytes:
    raw = (
        b"From: Pat <pat@example.org>\r\nTo: reply@reply.example\r\nSubject: hi\r\n"
        b"Message-ID: <m1@example.org>\r\n\r\nhello\r\n"
    )
    for d in domains:
        key = generate_key("ed25519")
        sig = dkim.sign(
            raw,
            b"s1",
            d.encode(),
            key.private_pem.encode(),
            signature_algorithm=b"ed25519-sha256",
            include_headers=[b"from", b"to", b"subject"],
        )
        raw = bytes(sig) + raw
    return raw


def _config(services: Services, port: int, **inbound: float) -> Config:
    cfg = services.config
    return dataclasses.replace(
        cfg,
        dns=dataclasses.replace(cfg.dns, nameservers=(f"127.0.0.1:{port}",), timeout_seconds=5),
        inbound=dataclasses.replace(cfg.inbound, **inbound),
    )


def _dkim_names(queries: list[bytes]) -> set[bytes]:
    return {q[12:].split(b"\x00", 1)[0] for q in queries if b"_domainkey" in q}


async def test_a_silent_nameserver_costs_one_message_its_dns_budget_and_no_more(
    services: Services, silent_dns: tuple[int, list[bytes]]
) -> None:
    port, queries = silent_dns
    cfg = _config(services, port, dns_budget_seconds=1.5)
    raw = _signed([f"d{i}.example" for i in range(5)])
    env = ReceivedEnvelope(mail_from="pat@example.org", peer_ip="192.0.2.7", helo="mx.example")
    started = time.monotonic()
    verdict = await auth.authenticate(cfg, services.executors.auth, raw, "example.org", env)
    elapsed = time.monotonic() - started
    # Unbudgeted, five signatures and SPF at 5 s a lookup took over 30 s.
    assert elapsed < 1.5 + 2.5, elapsed
    assert (verdict.dkim, verdict.spf) == ("temperror", "temperror")
    assert not verdict.aligned_pass
    assert queries  # the lookups really went to the silent server


async def test_at_most_max_dkim_signatures_are_looked_up(
    services: Services, silent_dns: tuple[int, list[bytes]]
) -> None:
    port, queries = silent_dns
    cfg = _config(services, port, dns_budget_seconds=30, max_dkim_signatures=2)
    cfg = dataclasses.replace(cfg, dns=dataclasses.replace(cfg.dns, timeout_seconds=0.3))
    raw = _signed([f"d{i}.example" for i in range(6)])
    verdict = await auth.authenticate(
        cfg, services.executors.auth, raw, "example.org", ReceivedEnvelope()
    )
    assert verdict.dkim == "temperror"
    assert len(_dkim_names(queries)) == 2

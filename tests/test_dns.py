"""``[dns] nameservers`` means the same servers to every part that looks something up: the
outbound MX lookup, the inbound DKIM/SPF checks and ``carebridge domain check``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver

from gateway.config import Config
from gateway.dns import async_resolver, blocking_resolver, nameservers
from gateway.inbound import dnsresolve
from gateway.outbound.transport import SmtpTransport
from tests.support.net import dns_servers, reserve_port

NAME = "sel._domainkey.clinic.example"
VALUE = "v=DKIM1; k=ed25519; p=abc"


class _OneRecord(BaseResolver):  # type: ignore[misc]
    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        if str(request.q.qname).rstrip(".") == NAME and QTYPE[request.q.qtype] == "TXT":
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(VALUE), ttl=60))
        else:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@pytest.fixture
def dns_port() -> Iterator[int]:
    with dns_servers(_OneRecord()) as port:
        yield port


def _servers(resolver: Any) -> list[tuple[str, int]]:
    return [(ns.address, ns.port) for ns in resolver.nameservers]


def test_ip_is_port_53_and_ip_port_keeps_its_own_port(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        dns={"nameservers": ["192.0.2.1", "192.0.2.2:5353", "2001:db8::1", "[2001:db8::2]:5300"]}
    )
    assert nameservers(cfg.dns) == [
        ("192.0.2.1", 53),
        ("192.0.2.2", 5353),
        ("2001:db8::1", 53),
        ("2001:db8::2", 5300),
    ]


async def test_every_caller_gets_the_same_servers_and_timeout(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config(dns={"nameservers": ["192.0.2.1", "192.0.2.2:5353"], "timeout_seconds": 1.5})
    transport = SmtpTransport(cfg)
    outbound = transport._resolver
    inbound = blocking_resolver(cfg.dns)  # what the inbound DKIM and SPF checks use
    admin = async_resolver(cfg.dns)  # what gateway/admin/dnsrecords.check_records builds
    want = [("192.0.2.1", 53), ("192.0.2.2", 5353)]
    for resolver in (outbound, inbound, admin):
        assert _servers(resolver) == want
        # The whole lookup ends in timeout_seconds; each server gets its share of it.
        assert (resolver.lifetime, resolver.timeout) == (1.5, 0.75)
        assert resolver.cache is None  # a record just published is seen by the next check
    await transport.close()


def test_no_nameservers_means_the_system_resolver(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    assert cfg.dns.nameservers == ()
    assert nameservers(cfg.dns) == []
    assert blocking_resolver(cfg.dns).nameservers  # read from the system's resolv.conf


async def test_lookup_through_the_factory_reaches_the_loopback_server(
    make_config: Callable[..., Config], dns_port: int
) -> None:
    cfg = make_config(dns={"nameservers": [f"127.0.0.1:{dns_port}"], "timeout_seconds": 2.0})
    answer = await async_resolver(cfg.dns).resolve(NAME, "TXT")
    assert [b"".join(r.strings).decode() for r in answer] == [VALUE]
    blocking = await asyncio.to_thread(dnsresolve.txt_lookup, blocking_resolver(cfg.dns), NAME)
    assert blocking == [VALUE.encode()]
    missing = await asyncio.to_thread(
        dnsresolve.txt_lookup, blocking_resolver(cfg.dns), "nothing.clinic.example"
    )
    assert missing == []


async def test_a_server_that_does_not_answer_leaves_the_next_its_turn(
    make_config: Callable[..., Config], dns_port: int
) -> None:
    silent = reserve_port()  # nothing listens: queries to it time out
    cfg = make_config(
        dns={
            "nameservers": [f"127.0.0.1:{silent}", f"127.0.0.1:{dns_port}"],
            "timeout_seconds": 1.0,
        }
    )
    answer = await async_resolver(cfg.dns).resolve(NAME, "TXT")
    assert [b"".join(r.strings).decode() for r in answer] == [VALUE]
    blocking = await asyncio.to_thread(dnsresolve.txt_lookup, blocking_resolver(cfg.dns), NAME)
    assert blocking == [VALUE.encode()]

"""A loopback DNS server for the reliability suites, so no test ever asks the internet.

Answers TXT records it was given (DKIM keys, SPF, DMARC) and NXDOMAIN for everything else,
over UDP and TCP on one port. Usable as a context manager in tests and bench scripts alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        if QTYPE[request.q.qtype] == "TXT":
            for value in self.records.get(qname, []):
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        if qname not in self.records:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@dataclass
class LoopbackDns:
    records: dict[str, list[str]] = field(default_factory=dict)
    port: int = 0
    _servers: list[Any] = field(default_factory=list)

    def start(self) -> LoopbackDns:
        resolver = _Resolver(self.records)
        quiet = DNSLogger(logf=lambda *a: None)
        for _ in range(50):  # the UDP port's TCP twin may be taken
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=quiet)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=quiet)
                break
            except OSError:
                udp.server.server_close()
        else:
            raise RuntimeError("no free port pair for the loopback DNS server")
        self.port = port
        self._servers = [udp, tcp]
        for s in self._servers:
            s.start_thread()
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.stop()
            s.server.server_close()

    def txt(self, name: str, value: str) -> None:
        self.records.setdefault(name.lower(), []).append(value)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

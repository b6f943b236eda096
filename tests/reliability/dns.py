"""A loopback DNS server for the reliability suites, so no test ever asks the internet.

Answers TXT records it was given (DKIM keys, SPF, DMARC) and NXDOMAIN for everything else,
over UDP and TCP on one port. Usable as a context manager in tests and bench scripts alike.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver

from tests.support.net import dns_servers


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
    _served: AbstractContextManager[int] | None = None

    def start(self) -> LoopbackDns:
        self._served = dns_servers(_Resolver(self.records))
        self.port = self._served.__enter__()
        return self

    def stop(self) -> None:
        if self._served is not None:
            self._served.__exit__(None, None, None)
            self._served = None

    def txt(self, name: str, value: str) -> None:
        self.records.setdefault(name.lower(), []).append(value)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

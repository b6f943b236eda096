"""A real DNS server on loopback for the domain tests (dnslib, UDP and TCP).

It serves a mutable zone: ``zone.set(name, "TXT", [...])`` publishes, ``zone.remove(...)``
unpublishes, so a test can act out a clinic admin editing their DNS.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnslib import MX, QTYPE, RCODE, RR, TXT, DNSLabel
from dnslib.server import BaseResolver

from tests.support.net import dns_servers


class Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], list[Any]] = {}
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []

    @staticmethod
    def _key(name: str, rtype: str) -> tuple[str, str]:
        return name.lower().rstrip("."), rtype.upper()

    def set(self, name: str, rtype: str, values: list[Any]) -> None:
        """TXT values are lists of character-strings; MX values are "PRIORITY HOST." text."""
        with self._lock:
            self._records[self._key(name, rtype)] = list(values)

    def remove(self, name: str, rtype: str) -> None:
        with self._lock:
            del self._records[self._key(name, rtype)]

    def publish(self, records: list[dict[str, Any]]) -> None:
        """Serve records exactly as ``carebridge domain dns --json`` printed them."""
        grouped: dict[tuple[str, str], list[Any]] = {}
        for r in records:
            value = r["strings"] if r["type"] == "TXT" else r["value"]
            grouped.setdefault(self._key(r["name"], r["type"]), []).append(value)
        for (name, rtype), values in grouped.items():
            self.set(name, rtype, values)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append((qname, qtype))
            names = {n for n, _ in self._records}
            values = list(self._records.get((qname, qtype), []))
        if qname not in names:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for value in values:
            if qtype == "TXT":
                chunks = [value] if isinstance(value, str) else value
                rdata = TXT([c.encode() for c in chunks])
            else:
                pref, host = value.split()
                rdata = MX(DNSLabel(host), int(pref))
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
        return reply


@contextmanager
def dns_server() -> Iterator[tuple[Zone, int]]:
    """Start UDP and TCP servers on one free loopback port; yield the zone and the port."""
    zone = Zone()
    with dns_servers(zone) as port:
        yield zone, port

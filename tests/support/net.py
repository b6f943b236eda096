"""Loopback ports and DNS servers for tests, picked so that two never collide.

A port handed to a server that binds it later (a subprocess, a thread) is taken from a block
below the kernel's ephemeral range (``ip_local_port_range`` starts at 32768), so no client
socket or ``port=0`` bind can take it in between; each pytest-xdist worker has its own block,
and within a process the ports are handed out in turn, each checked free for TCP and UDP.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from dnslib.server import BaseResolver, DNSLogger, DNSServer

_FIRST, _BLOCK, _BLOCKS = 20000, 1500, 8
_lock = threading.Lock()
_next: Iterator[int] | None = None


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = "".join(ch for ch in worker if ch.isdigit())
    return int(digits or 0) % _BLOCKS


def _candidates() -> Iterator[int]:
    start = _FIRST + _worker_index() * _BLOCK
    offset = os.getpid() % _BLOCK  # successive runs start at different places
    return itertools.cycle([start + (offset + i) % _BLOCK for i in range(_BLOCK)])


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def reserve_port() -> int:
    """A loopback port free for both TCP and UDP that no other test of this run will get."""
    global _next
    with _lock:
        if _next is None:
            _next = _candidates()
        for _ in range(_BLOCK):
            port = next(_next)
            if _free(port):
                return port
    raise RuntimeError("no free loopback port in this worker's block")


@contextmanager
def dns_servers(resolver: BaseResolver) -> Iterator[int]:
    """Serve ``resolver`` over UDP and TCP on one loopback port; yield it; always close both."""
    quiet = DNSLogger(logf=lambda *a: None)
    with ExitStack() as stack:
        for _ in range(20):
            port = reserve_port()
            try:
                udp = DNSServer(resolver, address="127.0.0.1", port=port, logger=quiet)
                stack.callback(udp.server.server_close)
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=quiet)
                stack.callback(tcp.server.server_close)
                break
            except OSError:
                stack.close()
        else:
            raise RuntimeError("no free port pair for the loopback DNS server")
        servers: list[Any] = [udp, tcp]
        for server in servers:
            server.start_thread()
            stack.callback(server.stop)
        yield port

"""Every DNS lookup carebridge makes goes to ``[dns] nameservers``: the resolver is built here.

Outbound MX lookups and ``carebridge domain check`` use the async resolver; the inbound
authentication gate runs dkimpy and pyspf, which are blocking, in a worker thread and gets
the blocking one. Both are configured by the same rules, so one config means the same
servers whoever asks:

- ``"ip"`` is that server on port 53, ``"ip:port"`` that server on that port (each entry
  keeps its own port); an IPv6 literal is written bare (port 53) or as ``"[ip]:port"``;
- an empty list means the system's resolver (``/etc/resolv.conf``);
- ``timeout_seconds`` bounds the whole lookup, and is shared among the servers so that one
  that does not answer leaves the next its turn;
- no cache: records a clinic has just published must be seen by the next check.
"""

from __future__ import annotations

from typing import TypeVar

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from gateway.config import DnsConfig

DEFAULT_PORT = 53

_R = TypeVar("_R", bound=dns.resolver.BaseResolver)


def nameservers(cfg: DnsConfig) -> list[tuple[str, int]]:
    """(address, port) of each ``[dns] nameservers`` entry, in order."""
    out: list[tuple[str, int]] = []
    for entry in cfg.nameservers:
        if entry.startswith("["):  # [v6] or [v6]:port
            host, _, rest = entry[1:].partition("]")
            out.append((host, int(rest.lstrip(":") or DEFAULT_PORT)))
        elif entry.count(":") == 1:  # v4:port
            host, _, port = entry.partition(":")
            out.append((host, int(port)))
        else:  # v4, or a bare v6 literal
            out.append((entry, DEFAULT_PORT))
    return out


def _configure(resolver: _R, cfg: DnsConfig) -> _R:
    servers = nameservers(cfg)
    if servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
    resolver.lifetime = cfg.timeout_seconds
    resolver.timeout = cfg.timeout_seconds / max(1, len(resolver.nameservers))
    return resolver


def async_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    """The resolver for lookups made on the event loop."""
    return _configure(dns.asyncresolver.Resolver(configure=not cfg.nameservers), cfg)


def blocking_resolver(cfg: DnsConfig) -> dns.resolver.Resolver:
    """The resolver for libraries that look up synchronously (dkimpy, pyspf), off the loop."""
    return _configure(dns.resolver.Resolver(configure=not cfg.nameservers), cfg)

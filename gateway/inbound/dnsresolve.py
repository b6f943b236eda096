"""DNS for the authentication gate: every lookup goes to ``[dns] nameservers``.

The resolver is built by gateway/dns.py; this module adapts it to the two libraries.

dkimpy takes a ``dnsfunc``; pyspf reads a module-level ``DNSLookup``, so that one is replaced,
once, by a dispatcher that uses the resolver carried in a context variable (set by the caller
for the duration of one check) and falls back to pyspf's own lookup otherwise.

All lookups for one message share one :class:`Budget` (``[inbound] dns_budget_seconds``): each
lookup may take only what is left of it, and none is made once it is spent, so a nameserver
that never answers costs one message that long at most, however many signatures it carries.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.exception
import dns.resolver
import spf


class DnsTempError(Exception):
    """The nameserver did not answer in time: the verdict is 'temperror', not 'fail'."""


class Budget:
    """The time left for one message's DNS lookups (all DKIM signatures and SPF)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def lifetime(self, res: dns.resolver.Resolver) -> float:
        """The lifetime one lookup may have; raises DnsTempError when the budget is spent."""
        left = self.remaining()
        if left <= 0.01:
            raise DnsTempError("budget")
        return min(float(res.lifetime), left)


_UNBOUNDED = Budget(3600.0 * 24 * 365)


def txt_lookup(res: dns.resolver.Resolver, name: str, budget: Budget | None = None) -> list[bytes]:
    """Every TXT record at ``name`` (each joined from its strings); [] when there is none."""
    lifetime = (budget or _UNBOUNDED).lifetime(res)
    try:
        answer = res.resolve(name, "TXT", raise_on_no_answer=False, lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsTempError(type(exc).__name__) from None
    if answer.rrset is None:
        return []
    return [b"".join(r.strings) for r in answer.rrset]


def dkim_dnsfunc(res: dns.resolver.Resolver, budget: Budget | None = None) -> Any:
    """The ``dnsfunc`` dkimpy wants: name bytes -> the TXT value, or None."""
    import dkim

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            values = txt_lookup(res, name.decode("ascii").rstrip("."), budget)
        except DnsTempError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        return values[0] if values else None

    return lookup


_current: contextvars.ContextVar[tuple[dns.resolver.Resolver, Budget] | None] = (
    contextvars.ContextVar("carebridge_spf_resolver", default=None)
)
_original_lookup = spf.DNSLookup


def _spf_lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> Any:
    current = _current.get()
    if current is None:
        return _original_lookup(name, qtype, strict, timeout)
    res, budget = current
    out: list[tuple[tuple[str, str], Any]] = []
    try:
        lifetime = budget.lifetime(res)
    except DnsTempError:
        raise spf.TempError("DNS budget spent") from None
    try:
        answer = res.resolve(name, qtype, raise_on_no_answer=False, lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return out
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise spf.TempError("DNS " + type(exc).__name__) from None
    if answer.rrset is None:
        return out
    for r in answer.rrset:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), r.address))
        elif qtype == "MX":
            out.append(((name, qtype), (r.preference, r.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), r.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), r.strings))
    return out


spf.DNSLookup = _spf_lookup


@contextmanager
def spf_resolver(res: dns.resolver.Resolver, budget: Budget | None = None) -> Iterator[None]:
    """Route pyspf's lookups in this context (thread) through ``res``, within ``budget``."""
    token = _current.set((res, budget or _UNBOUNDED))
    try:
        yield
    finally:
        _current.reset(token)

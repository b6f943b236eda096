"""DNS for the authentication gate: every lookup goes to ``[dns] nameservers``.

The resolver is built by gateway/dns.py; this module adapts it to the two libraries.

dkimpy takes a ``dnsfunc``; pyspf reads a module-level ``DNSLookup``, so that one is replaced,
once, by a dispatcher that uses the resolver carried in a context variable (set by the caller
for the duration of one check) and falls back to pyspf's own lookup otherwise.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.exception
import dns.resolver
import spf


class DnsTempError(Exception):
    """The nameserver did not answer in time: the verdict is 'temperror', not 'fail'."""


def txt_lookup(res: dns.resolver.Resolver, name: str) -> list[bytes]:
    """Every TXT record at ``name`` (each joined from its strings); [] when there is none."""
    try:
        answer = res.resolve(name, "TXT", raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsTempError(type(exc).__name__) from None
    if answer.rrset is None:
        return []
    return [b"".join(r.strings) for r in answer.rrset]


def dkim_dnsfunc(res: dns.resolver.Resolver) -> Any:
    """The ``dnsfunc`` dkimpy wants: name bytes -> the TXT value, or None."""
    import dkim

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            values = txt_lookup(res, name.decode("ascii").rstrip("."))
        except DnsTempError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        return values[0] if values else None

    return lookup


_current: contextvars.ContextVar[dns.resolver.Resolver | None] = contextvars.ContextVar(
    "carebridge_spf_resolver", default=None
)
_original_lookup = spf.DNSLookup


def _spf_lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> Any:
    res = _current.get()
    if res is None:
        return _original_lookup(name, qtype, strict, timeout)
    out: list[tuple[tuple[str, str], Any]] = []
    try:
        answer = res.resolve(name, qtype, raise_on_no_answer=False)
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
def spf_resolver(res: dns.resolver.Resolver) -> Iterator[None]:
    """Route pyspf's lookups in this context (thread) through ``res``."""
    token = _current.set(res)
    try:
        yield
    finally:
        _current.reset(token)

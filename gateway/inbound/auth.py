"""The authentication gate: who really sent this message?

Evaluated for every inbound message: DKIM (dkimpy, at most ``[inbound] max_dkim_signatures``),
SPF (pyspf, for mail that came over SMTP with a peer address) and DMARC-style alignment of the
passing identities with the From domain (relaxed: same organisational domain, from the public
suffix list). All DNS goes through ``[dns] nameservers``, and all lookups for one message share
``[inbound] dns_budget_seconds`` (then the verdict is temperror). For mail already checked
upstream, ``Authentication-Results`` is believed only from the hop that wrote it (anyone can
write one, in any position): the configured IMAP server, or an SMTP client connecting from
``[inbound] trusted_relays``; and of its headers only the topmost block stamped with
``[inbound] trusted_authserv_id``, where only trace fields (Received and the like) may stand
above it. Every other such header is ignored and counted in the verdict (``ar_ignored``).

The verdict is stored with the message; it holds pass/fail words only, never an address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import authres  # type: ignore[import-untyped]
import dkim
import spf
from publicsuffixlist import PublicSuffixList

from gateway.config import Config
from gateway.dns import blocking_resolver
from gateway.executors import ThreadPool
from gateway.inbound import dnsresolve

log = logging.getLogger("carebridge.inbound.auth")
# dkimpy logs the signing domain and selector of every failed lookup at ERROR: a domain may
# identify a person, so its logger is silenced and the verdict words say what happened.
logging.getLogger("dkimpy").setLevel(logging.CRITICAL + 1)

AUTH_GRACE_SECONDS = 5.0  # RSA and parsing on top of the DNS budget
_DKIM_HEADER = re.compile(rb"^dkim-signature:", re.IGNORECASE | re.MULTILINE)


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organisational domain (example.co.uk for mail.example.co.uk)."""
    d = domain.lower().rstrip(".")
    return _psl().privatesuffix(d) or d


def aligned(identity_domain: str, from_domain: str) -> bool:
    """DMARC relaxed alignment: both sit under the same organisational domain."""
    if not identity_domain or not from_domain:
        return False
    return org_domain(identity_domain) == org_domain(from_domain)


@dataclass(frozen=True)
class ReceivedEnvelope:
    """What the SMTP session knew of a received message: needed for SPF. Addresses are PHI:
    stored encrypted. (Not aiosmtpd's session envelope, nor the outbound one.)"""

    mail_from: str = ""
    rcpt_tos: tuple[str, ...] = ()
    peer_ip: str = ""
    helo: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "peer_ip": self.peer_ip,
            "helo": self.helo,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> ReceivedEnvelope:
        doc = doc or {}
        return cls(
            mail_from=str(doc.get("mail_from", "")),
            rcpt_tos=tuple(doc.get("rcpt_tos", ())),
            peer_ip=str(doc.get("peer_ip", "")),
            helo=str(doc.get("helo", "")),
        )


@dataclass(frozen=True)
class AuthVerdict:
    dkim: str = "none"  # pass, fail, temperror, none
    dkim_domains: tuple[str, ...] = ()  # d= of every passing signature
    spf: str = "none"  # pass, fail, softfail, neutral, none, temperror, permerror
    spf_domain: str = ""
    from_domain: str = ""
    dkim_aligned: bool = False
    spf_aligned: bool = False
    sources: tuple[str, ...] = field(default=())  # "local", "trusted-header"
    # Authentication-Results headers not believed (wrong hop, position or authserv-id).
    ar_ignored: int = 0

    @property
    def aligned_pass(self) -> bool:
        """DMARC-style: a passing DKIM or SPF identity aligned with the From domain."""
        return self.dkim_aligned or self.spf_aligned

    def to_json(self) -> dict[str, Any]:
        """Verdict words only: domains may identify a person, so they are not kept."""
        return {
            "dkim": self.dkim,
            "spf": self.spf,
            "dkim_aligned": self.dkim_aligned,
            "spf_aligned": self.spf_aligned,
            "aligned": self.aligned_pass,
            "sources": list(self.sources),
            "ar_ignored": self.ar_ignored,
        }


def _check_dkim(raw: bytes, dnsfunc: Any, max_signatures: int = 5) -> tuple[str, list[str]]:
    count = len(_DKIM_HEADER.findall(raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]))
    if count == 0:
        return "none", []
    passing: list[str] = []
    temp = False
    timed_out: list[bytes] = []

    def lookup(name: bytes, timeout: float = 5) -> Any:
        # dkimpy catches its own DnsTimeoutError and reports a plain failure: note it here,
        # so a nameserver that does not answer gives temperror, not fail.
        try:
            return dnsfunc(name, timeout=timeout)
        except dkim.DnsTimeoutError:
            timed_out.append(name)
            raise

    for idx in range(min(count, max_signatures)):  # bounded: each costs a DNS lookup
        try:
            # The constructor parses the header block and raises on a malformed one too:
            # that is a failed signature, never an unprocessable message.
            d = dkim.DKIM(raw)
            ok = d.verify(idx=idx, dnsfunc=lookup)
        except dkim.DnsTimeoutError:
            temp = True
            continue
        except Exception:  # dkimpy raises many kinds on malformed signatures: a failure
            ok = False
        if ok and d.domain:
            passing.append(d.domain.decode("ascii", "replace").lower())
    if passing:
        return "pass", passing
    return ("temperror" if temp or timed_out else "fail"), []


def _check_spf(envelope: ReceivedEnvelope, querytime: float = 10) -> tuple[str, str]:
    if not envelope.peer_ip:
        return "none", ""
    sender = envelope.mail_from
    helo = envelope.helo or "unknown"
    if not sender:
        sender = f"postmaster@{helo}"
    domain = sender.rpartition("@")[2].lower()
    try:
        if querytime <= 0:
            return "temperror", domain  # the message's DNS budget is spent
        result, _explanation = spf.check2(i=envelope.peer_ip, s=sender, h=helo, querytime=querytime)
    except Exception:  # pyspf raises on malformed input: treat as a permanent error
        return "permerror", domain
    return str(result), domain


_AR = "authentication-results"
# Fields a receiving hop writes at the top of the header: the trusted stamp may sit below them.
_TRACE = frozenset(
    {
        "received",
        "return-path",
        "delivered-to",
        "x-original-to",
        "received-spf",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
    }
)
MAX_AR_VALUE = 4096  # a longer Authentication-Results is nobody's stamp: not parsed
MAX_AR_BELIEVED = 16


def _header_fields(raw: bytes, limit: int) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each header field, top to bottom: one linear
    pass over at most ``limit`` bytes, in the order the hops wrote them."""
    head = raw[:limit]
    end = len(head)
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = head.find(sep)
        if at != -1:
            end = min(end, at)
    fields: list[tuple[str, list[str]]] = []
    for line in head[:end].decode("utf-8", "replace").split("\n"):
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t"):
            if fields:
                fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(":")
        if colon:
            fields.append((name.strip().lower(), [value]))
        else:
            fields.append(("", [line]))  # not a field: ends any trusted block
    return [(name, " ".join(v.strip() for v in parts)) for name, parts in fields]


def _believed_hop(cfg: Config, envelope: ReceivedEnvelope) -> bool:
    """Did the hop that handed us this message write its Authentication-Results?"""
    if not envelope.peer_ip:
        # Fetched over IMAP (no SMTP peer): from the mailbox's own configured server.
        return True
    try:
        ip = ipaddress.ip_address(envelope.peer_ip)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n) for n in cfg.inbound.trusted_relays)


def _parse_ar(value: str) -> Any | None:
    if len(value) > MAX_AR_VALUE:
        return None
    try:
        return authres.AuthenticationResultsHeader.parse_value(value)
    except Exception:  # an unparsable header is simply not believed
        return None


def _trusted_results(cfg: Config, raw: bytes, envelope: ReceivedEnvelope) -> tuple[list[Any], int]:
    """The results believed, and how many Authentication-Results headers were not."""
    fields = _header_fields(raw, cfg.inbound.max_header_bytes)
    total = sum(1 for name, _ in fields if name == _AR)
    authserv_id = cfg.inbound.trusted_authserv_id.lower()
    if not total or not authserv_id or not _believed_hop(cfg, envelope):
        return [], total
    results: list[Any] = []
    believed = 0
    for name, value in fields:
        if name != _AR:
            if believed or name not in _TRACE:
                break  # the block ended, or the sender's own fields began
            continue
        header = _parse_ar(value)
        if header is None or str(header.authserv_id).lower() != authserv_id:
            break  # the topmost stamp is someone else's: nothing below it is the hop's
        believed += 1
        results.extend(header.results)
        if believed >= MAX_AR_BELIEVED:
            break
    return results, total - believed


def _prop(result: Any, type_: str, name: str) -> str:
    for p in result.properties:
        if p.type == type_ and p.name == name:
            return str(p.value)
    return ""


def evaluate(
    cfg: Config,
    raw: bytes,
    from_domain: str,
    envelope: ReceivedEnvelope,
) -> AuthVerdict:
    """Run every check (blocking: DNS and RSA). Call it in a worker thread. Trusted
    Authentication-Results are read from ``raw``'s header block in one linear pass."""
    res = blocking_resolver(cfg.dns)
    budget = dnsresolve.Budget(cfg.inbound.dns_budget_seconds)
    dkim_result, dkim_domains = _check_dkim(
        raw, dnsresolve.dkim_dnsfunc(res, budget), cfg.inbound.max_dkim_signatures
    )
    with dnsresolve.spf_resolver(res, budget):
        spf_result, spf_domain = _check_spf(envelope, budget.remaining())
    sources = ["local"]
    believed, ar_ignored = _trusted_results(cfg, raw, envelope)
    if ar_ignored:
        log.debug("ignored %d Authentication-Results headers", ar_ignored)
    for r in believed:
        method, result = str(r.method).lower(), str(r.result).lower()
        if method == "dkim" and result == "pass":
            d = _prop(r, "header", "d").lower()
            if d:
                dkim_domains.append(d)
                dkim_result = "pass"
        elif method == "spf" and result == "pass" and spf_result != "pass":
            mailfrom = _prop(r, "smtp", "mailfrom")
            spf_domain = (mailfrom.rpartition("@")[2] or _prop(r, "smtp", "helo")).lower()
            spf_result = "pass"
        else:
            continue
        if "trusted-header" not in sources:
            sources.append("trusted-header")
    return AuthVerdict(
        dkim=dkim_result,
        dkim_domains=tuple(dkim_domains),
        spf=spf_result,
        spf_domain=spf_domain,
        from_domain=from_domain,
        dkim_aligned=any(aligned(d, from_domain) for d in dkim_domains),
        spf_aligned=spf_result == "pass" and aligned(spf_domain, from_domain),
        sources=tuple(sources),
        ar_ignored=ar_ignored,
    )


async def authenticate(
    cfg: Config,
    executor: ThreadPool,
    raw: bytes,
    from_domain: str,
    envelope: ReceivedEnvelope,
) -> AuthVerdict:
    """:func:`evaluate` in the auth pool, so DNS and RSA never stall SMTP sessions nor take
    the threads sign-in needs. Every lookup is bounded by the message's DNS budget; should
    the check still overrun it (RSA on a huge message), the verdict is temperror."""
    try:
        async with asyncio.timeout(cfg.inbound.dns_budget_seconds + AUTH_GRACE_SECONDS):
            return await executor.run(evaluate, cfg, raw, from_domain, envelope)
    except TimeoutError:
        log.warning("authentication checks overran the DNS budget: temperror")
        return AuthVerdict(dkim="temperror", spf="temperror", from_domain=from_domain)

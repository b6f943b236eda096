"""Relay-domain onboarding: a clinic's sending and reply domains, DKIM keys and DNS records.

Modelled on the domain-authentication wizards of Postmark or SendGrid: ``add`` sets the
domains and creates an Ed25519 and an RSA-2048 key under a dated selector; ``records`` lists
every record the clinic must publish; ``check`` looks each one up through ``[dns] nameservers``
and says, record by record, what is right, missing or different.

DKIM key life cycle (``DkimKey.state``); only ``active`` keys sign (see ``gateway/dkim.py``):

    pending --(check sees it in DNS)--> active --(a newer key activates)--> retiring
    retiring --(rotate --finish, or check after [dns] dkim_retire_after_days)--> retired

A ``retiring`` key stays in the published records so mail signed just before the switch still
verifies; a ``retired`` key is dropped from them. The first keys of a domain start ``active``:
there is nothing else to sign with, and a signature whose key is not yet published fails no
worse than no signature at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.config import Config
from gateway.dkim import dns_txt, ensure_domain_keys, generate_key
from gateway.errors import UsageError
from gateway.models import Clinic, DkimKey

log = logging.getLogger("carebridge.domains")

# Per algorithm: the selector suffix (matches the outbound helper's ``cbYYYYMMDDe``/``r``).
KEY_ALGORITHMS = (("ed25519", "e"), ("rsa", "r"))
PUBLISHED_STATES = ("pending", "active", "retiring")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
TXT_CHUNK = 255  # one character-string of a TXT record holds at most 255 bytes


# -- domains -----------------------------------------------------------------------------
def check_domain(value: str, what: str) -> str:
    """Return the domain in lowercase ASCII (IDNA) form, or raise a :class:`UsageError`."""
    raw = value.strip().rstrip(".").lower()
    try:
        ascii_form = raw.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_form = ""
    labels = ascii_form.split(".")
    if (
        not ascii_form
        or len(ascii_form) > 253
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise UsageError(
            f"{what} {value!r} is not a domain name; give one such as clinic.example.org"
        )
    return ascii_form


def _selector_base(clinic_keys: Sequence[DkimKey], now: datetime) -> str:
    """A dated selector prefix not used before by this clinic (``cb20261126``, ``cb20261126x2``)."""
    used = {k.selector for k in clinic_keys}
    base = f"cb{now:%Y%m%d}"
    n = 1
    candidate = base
    while any(candidate + suffix in used for _, suffix in KEY_ALGORITHMS):
        n += 1
        candidate = f"{base}x{n}"
    return candidate


async def clinic_keys(session: AsyncSession, clinic: Clinic) -> list[DkimKey]:
    rows = await session.scalars(
        select(DkimKey).where(DkimKey.clinic_id == clinic.id).order_by(DkimKey.created_at)
    )
    return list(rows.all())


async def _create_key_pair(
    session: AsyncSession, clinic: Clinic, *, state: str, now: datetime
) -> list[DkimKey]:
    base = _selector_base(await clinic_keys(session, clinic), now)
    made = []
    for algorithm, suffix in KEY_ALGORITHMS:
        generated = generate_key(algorithm)
        key = DkimKey(
            clinic_id=clinic.id,
            domain=clinic.sending_domain,
            selector=base + suffix,
            algorithm=algorithm,
            private_key=generated.private_pem,
            public_key=generated.public_b64,
            state=state,
            created_at=now,
            activated_at=now if state == "active" else None,
        )
        session.add(key)
        made.append(key)
    await session.flush()
    return made


@dataclass(frozen=True)
class AddResult:
    clinic: Clinic
    created_keys: list[DkimKey]


async def add_domains(
    session: AsyncSession,
    clinic: Clinic,
    *,
    sending_domain: str,
    reply_domain: str,
    now: datetime,
    actor: str,
) -> AddResult:
    """Set the clinic's domains and make sure its sending domain has an active key pair.

    Running it again with the same domains changes nothing; moving to a new sending domain
    retires the old domain's keys (they can no longer align with the From domain).
    """
    sending = check_domain(sending_domain, "sending domain")
    reply = check_domain(reply_domain, "reply domain")
    other = await session.scalar(
        select(Clinic.slug).where(Clinic.reply_domain == reply, Clinic.id != clinic.id)
    )
    if other is not None:
        raise UsageError(
            f"reply domain {reply} already belongs to clinic {other}; each clinic needs its own"
        )
    changed = (clinic.sending_domain, clinic.reply_domain) != (sending, reply)
    clinic.sending_domain, clinic.reply_domain = sending, reply
    keys = await clinic_keys(session, clinic)
    for key in keys:
        if key.domain != sending and key.state != "retired":
            key.state, key.retired_at = "retired", now
    before = {k.id for k in keys}
    await session.flush()
    # The outbound side's helper creates whichever of the two keys the domain lacks.
    present = await ensure_domain_keys(session, clinic, now=now, state="active")
    created = [k for k in present if k.id not in before]
    await session.flush()
    if changed or created:
        await audit.record(
            session,
            actor,
            "domain.add",
            "clinic",
            clinic.id,
            keys=[k.id for k in created],
        )
        log.info("clinic %s domains set, %d new DKIM keys", clinic.id, len(created))
    return AddResult(clinic, created)


def require_domains(clinic: Clinic) -> None:
    if not clinic.sending_domain or not clinic.reply_domain:
        raise UsageError(
            f"clinic {clinic.slug} has no relay domains yet; run "
            f"'carebridge domain add {clinic.slug} --sending-domain D --reply-domain R'"
        )


async def rotate_dkim(
    session: AsyncSession, clinic: Clinic, *, now: datetime, actor: str
) -> list[DkimKey]:
    """Create a pending key pair under a new selector; signing switches once DNS has it."""
    require_domains(clinic)
    keys = await clinic_keys(session, clinic)
    if any(k.state == "pending" for k in keys):
        raise UsageError(
            "a DKIM rotation is already pending; publish its records "
            f"('carebridge domain dns {clinic.slug}') and run 'carebridge domain check "
            f"{clinic.slug}'"
        )
    has_active = any(k.state == "active" and k.domain == clinic.sending_domain for k in keys)
    created = await _create_key_pair(
        session, clinic, state="pending" if has_active else "active", now=now
    )
    await audit.record(
        session, actor, "domain.dkim_rotate", "clinic", clinic.id, keys=[k.id for k in created]
    )
    log.info("clinic %s DKIM rotation started, selector %s", clinic.id, created[0].selector)
    return created


async def finish_rotation(
    session: AsyncSession, clinic: Clinic, *, now: datetime, actor: str
) -> list[DkimKey]:
    """Retire the keys a rotation replaced (they leave the published records)."""
    keys = await clinic_keys(session, clinic)
    if any(k.state == "pending" for k in keys):
        raise UsageError(
            "the new DKIM keys are still pending: signing has not switched yet; publish them "
            f"and run 'carebridge domain check {clinic.slug}' first"
        )
    retired = [k for k in keys if k.state == "retiring"]
    for key in retired:
        key.state, key.retired_at = "retired", now
    if retired:
        await audit.record(
            session,
            actor,
            "domain.dkim_retire",
            "clinic",
            clinic.id,
            keys=[k.id for k in retired],
        )
    return retired


# -- the records to publish ----------------------------------------------------------------
@dataclass(frozen=True)
class DnsRecord:
    """One record a clinic publishes. ``kind`` says what it is for and how it is checked."""

    kind: str  # dkim, spf, dmarc, dmarc-report-auth, mx, mta-sts, tls-rpt
    name: str  # fully qualified, no trailing dot
    type: str  # TXT or MX
    value: str  # TXT: the whole text; MX: "PRIORITY EXCHANGE." form
    selector: str = ""
    key_state: str = ""

    @property
    def strings(self) -> list[str]:
        """TXT value split into <=255-byte character-strings, as DNS carries it."""
        if self.type != "TXT":
            return [self.value]
        return [self.value[i : i + TXT_CHUNK] for i in range(0, len(self.value), TXT_CHUNK)]

    def zone_line(self, ttl: int = 3600) -> str:
        data = " ".join(f'"{s}"' for s in self.strings) if self.type == "TXT" else self.value
        return f"{self.name}. {ttl} IN {self.type} {data}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["strings"] = self.strings
        return out


def spf_mechanisms(config: Config) -> tuple[str, ...]:
    return config.dns.spf_mechanisms or (f"a:{config.smtp.hostname.rstrip('.')}",)


def dmarc_rua(config: Config, clinic: Clinic) -> str:
    return config.dns.dmarc_rua or f"postmaster@{clinic.reply_domain}"


def _in_org(child: str, parent: str) -> bool:
    return child == parent or child.endswith("." + parent) or parent.endswith("." + child)


def records(config: Config, clinic: Clinic, keys: Sequence[DkimKey]) -> list[DnsRecord]:
    """Every record to publish for the clinic's domains, in the order a wizard shows them."""
    require_domains(clinic)
    sending, reply = clinic.sending_domain, clinic.reply_domain
    out: list[DnsRecord] = []
    for key in keys:
        if key.state in PUBLISHED_STATES and key.domain == sending:
            out.append(
                DnsRecord(
                    "dkim",
                    f"{key.selector}._domainkey.{sending}",
                    "TXT",
                    dns_txt((key.algorithm, key.public_key)),
                    selector=key.selector,
                    key_state=key.state,
                )
            )
    spf = "v=spf1 " + " ".join(spf_mechanisms(config)) + " -all"
    # The From domain and the envelope (bounce+TOKEN@reply) domain are both checked by SPF.
    for domain in dict.fromkeys((sending, reply)):
        out.append(DnsRecord("spf", domain, "TXT", spf))
    rua = dmarc_rua(config, clinic)
    out.append(
        DnsRecord(
            "dmarc",
            f"_dmarc.{sending}",
            "TXT",
            f"v=DMARC1; p={config.dns.dmarc_policy}; rua=mailto:{rua}; adkim=r; aspf=r",
        )
    )
    rua_domain = rua.rpartition("@")[2].lower()
    if not _in_org(rua_domain, sending):
        # RFC 7489 7.1: a report address outside the domain must authorise the reports.
        out.append(
            DnsRecord(
                "dmarc-report-auth", f"{sending}._report._dmarc.{rua_domain}", "TXT", "v=DMARC1"
            )
        )
    hostname = config.smtp.hostname.rstrip(".").lower()
    out.append(DnsRecord("mx", reply, "MX", f"10 {hostname}."))
    if config.dns.mta_sts_mode:
        out.append(
            DnsRecord("mta-sts", f"_mta-sts.{reply}", "TXT", f"v=STSv1; id={_sts_id(config)}")
        )
        out.append(
            DnsRecord("tls-rpt", f"_smtp._tls.{reply}", "TXT", f"v=TLSRPTv1; rua=mailto:{rua}")
        )
    return out


def _sts_id(config: Config) -> str:
    # RFC 8461: the id must change whenever the policy file changes; derive it from the file.
    import hashlib

    return hashlib.sha256(mta_sts_policy(config).encode()).hexdigest()[:16]


def mta_sts_policy(config: Config) -> str:
    """The policy file served at https://mta-sts.<reply domain>/.well-known/mta-sts.txt."""
    hostname = config.smtp.hostname.rstrip(".").lower()
    mode = config.dns.mta_sts_mode or "none"
    return f"version: STSv1\nmode: {mode}\nmx: {hostname}\nmax_age: 604800\n"


# -- what is published, record by record ---------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    record: DnsRecord
    status: str  # ok, missing, different, error
    found: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.record.kind,
            "name": self.record.name,
            "type": self.record.type,
            "expected": self.record.value,
            "selector": self.record.selector,
            "status": self.status,
            "found": self.found,
            "detail": self.detail,
        }


def tags(value: str) -> dict[str, str]:
    """``k=v; k=v`` tag lists (DKIM, DMARC, MTA-STS, TLS-RPT), whitespace removed."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip().lower()] = "".join(v.split())
    return out


def judge(record: DnsRecord, found: list[str]) -> CheckResult:
    """Compare what DNS holds with the record; lenient where extra content is harmless."""
    if not found:
        return CheckResult(record, "missing", found, "no record at this name")
    want = tags(record.value)
    if record.kind == "dkim":
        for txt in found:
            have = tags(txt)
            if have.get("p") == want["p"] and have.get("k", "rsa") == want["k"]:
                return CheckResult(record, "ok", found)
        return CheckResult(record, "different", found, "no TXT here carries this key")
    if record.kind == "spf":
        spf = [t for t in found if t.lower().split(" ", 1)[0] == "v=spf1"]
        if not spf:
            return CheckResult(record, "missing", found, "no v=spf1 record")
        if len(spf) > 1:
            return CheckResult(record, "different", found, "more than one SPF record (RFC 7208)")
        have_terms = {t.lower() for t in spf[0].split()}
        need = [m for m in record.value.split()[1:-1] if m.lower() not in have_terms]
        if need:
            return CheckResult(record, "different", found, "SPF lacks " + " ".join(need))
        return CheckResult(record, "ok", found)
    if record.kind in ("dmarc", "dmarc-report-auth", "mta-sts", "tls-rpt"):
        version = want["v"].lower()
        matching = [tags(t) for t in found if tags(t).get("v", "").lower() == version]
        if not matching:
            return CheckResult(record, "missing", found, f"no v={want['v']} record")
        if len(matching) > 1:
            return CheckResult(record, "different", found, "more than one record")
        have = matching[0]
        for tag in ("p", "rua", "id"):
            if tag == "rua" and tag in want:
                if want[tag].lower() not in have.get(tag, "").lower().split(","):
                    return CheckResult(
                        record, "different", found, f"{tag} should include {want[tag]}"
                    )
            elif tag in want and have.get(tag, "").lower() != want[tag].lower():
                return CheckResult(record, "different", found, f"{tag} should be {want[tag]}")
        return CheckResult(record, "ok", found)
    if record.kind == "mx":
        exchange = record.value.split()[1].rstrip(".").lower()
        if any(f.split()[-1].rstrip(".").lower() == exchange for f in found):
            return CheckResult(record, "ok", found)
        return CheckResult(record, "different", found, f"no MX points at {exchange}")
    raise ValueError(f"unknown record kind {record.kind!r}")


# -- looking records up --------------------------------------------------------------------
def build_resolver(config: Config) -> Any:
    """A dnspython async resolver on ``[dns] nameservers`` ("ip" or "ip:port"), no cache."""
    import dns.asyncresolver
    import dns.nameserver

    if not config.dns.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[dns.nameserver.Nameserver] = []
        for entry in config.dns.nameservers:
            host, port = entry, 53
            if entry.startswith("["):  # [v6]:port
                host, _, rest = entry[1:].partition("]")
                port = int(rest.lstrip(":") or 53)
            elif entry.count(":") == 1:
                host, _, p = entry.partition(":")
                port = int(p)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    resolver.lifetime = config.dns.timeout_seconds
    resolver.timeout = config.dns.timeout_seconds
    return resolver


async def lookup(resolver: Any, name: str, rdtype: str) -> list[str]:
    """The record's values as text (TXT strings joined, MX as "PRIORITY EXCHANGE")."""
    import dns.resolver

    try:
        answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    if answer.rrset is None:
        return []
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset]
    return [r.to_text() for r in answer.rrset]


async def check_records(config: Config, wanted: Sequence[DnsRecord]) -> list[CheckResult]:
    """Look every record up concurrently and judge it; a DNS failure is reported, not raised."""
    import asyncio

    import dns.exception

    resolver = build_resolver(config)

    async def one(record: DnsRecord) -> CheckResult:
        try:
            found = await lookup(resolver, record.name, record.type)
        except dns.exception.Timeout:
            return CheckResult(record, "error", [], "DNS lookup timed out; check [dns] nameservers")
        except dns.exception.DNSException as exc:
            return CheckResult(record, "error", [], f"DNS lookup failed ({type(exc).__name__})")
        return judge(record, found)

    results = list(await asyncio.gather(*(one(r) for r in wanted)))
    # asyncio closes a datagram transport in a later loop iteration; give it that iteration
    # so a short-lived loop (a CLI command) does not end with sockets still open.
    await asyncio.sleep(0)
    return results


@dataclass(frozen=True)
class CheckReport:
    results: list[CheckResult]
    activated: list[str]  # selectors that started signing because DNS now has them
    retired: list[str]  # selectors dropped after their grace period

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": [r.to_json() for r in self.results],
            "activated": self.activated,
            "retired": self.retired,
        }


async def check_clinic(services: Any, clinic_slug: str, *, actor: str) -> CheckReport:
    """Check the clinic's published records, then advance its DKIM keys.

    DNS lookups run outside any transaction; the state change re-reads the keys and switches
    signing only to pending keys whose records were seen intact.
    """
    from gateway.clinics import get_clinic

    async with services.sessions() as session:
        clinic = await get_clinic(session, clinic_slug)
        wanted = records(services.config, clinic, await clinic_keys(session, clinic))
    results = await check_records(services.config, wanted)
    seen = {r.record.selector for r in results if r.record.kind == "dkim" and r.ok}
    now: datetime = services.clock.now()
    activated: list[str] = []
    retired: list[str] = []
    async with services.transaction() as session:
        clinic = await get_clinic(session, clinic_slug)
        keys = [k for k in await clinic_keys(session, clinic) if k.domain == clinic.sending_domain]
        pending = [k for k in keys if k.state == "pending"]
        if pending and all(k.selector in seen for k in pending):
            for key in keys:
                if key.state == "active":
                    key.state = "retiring"
            for key in pending:
                key.state, key.activated_at = "active", now
            activated = [k.selector for k in pending]
            await audit.record(
                session,
                actor,
                "domain.dkim_activate",
                "clinic",
                clinic.id,
                keys=[k.id for k in pending],
            )
        grace = timedelta(days=services.config.dns.dkim_retire_after_days)
        newest = max(
            (k.activated_at for k in keys if k.state == "active" and k.activated_at), default=None
        )
        if newest is not None and now - newest >= grace:
            old = [k for k in keys if k.state == "retiring"]
            for key in old:
                key.state, key.retired_at = "retired", now
            retired = [k.selector for k in old]
            if old:
                await audit.record(
                    session,
                    actor,
                    "domain.dkim_retire",
                    "clinic",
                    clinic.id,
                    keys=[k.id for k in old],
                )
        await audit.record(
            session,
            actor,
            "domain.check",
            "clinic",
            clinic.id,
            ok=all(r.ok for r in results),
            failing=[r.record.kind for r in results if not r.ok],
        )
    log.info(
        "clinic %s DNS check: %d/%d records ok",
        clinic.id,
        sum(r.ok for r in results),
        len(results),
    )
    return CheckReport(results, activated, retired)

"""The DNS records a clinic publishes for its relay domains, and checking what DNS serves.

:func:`records` lists what to publish (DKIM for each published key, SPF, DMARC with a
reporting address, MX for the reply domain, optional MTA-STS/TLS-RPT); :func:`check_records`
looks each one up with dnspython through ``[dns] nameservers`` and :func:`judge` says whether
it is ok, missing or different. The key life cycle that acts on the result is in
``gateway/admin/domains.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config import Config
from gateway.errors import UsageError
from gateway.models import Clinic, DkimKey
from gateway.outbound.dkim import dns_txt

# Keys in these states are in the published records (retired ones are not).
PUBLISHED_STATES = ("pending", "active", "retiring")
TXT_CHUNK = 255  # one character-string of a TXT record holds at most 255 bytes


def require_domains(clinic: Clinic) -> None:
    if not clinic.sending_domain or not clinic.reply_domain:
        raise UsageError(
            f"clinic {clinic.slug} has no relay domains yet; run "
            f"'carebridge domain add {clinic.slug} --sending-domain D --reply-domain R'"
        )


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
    if not out:
        # Without keys the list would look complete and a check would pass unsigned mail.
        raise UsageError(
            f"clinic {clinic.slug} has no DKIM keys for {sending}; run 'carebridge domain add "
            f"{clinic.slug} --sending-domain {sending} --reply-domain {reply}'"
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

    from gateway.dns import async_resolver

    resolver = async_resolver(config.dns)

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

"""Relay-domain onboarding: a clinic's sending and reply domains, DKIM keys and DNS records.

Modelled on the domain-authentication wizards of Postmark or SendGrid: ``add`` sets the
domains and creates an Ed25519 and an RSA-2048 key under a dated selector; ``records`` lists
every record the clinic must publish; ``check`` looks each one up through ``[dns] nameservers``
and says, record by record, what is right, missing or different.

DKIM key life cycle (``DkimKey.state``); only ``active`` keys sign
(see ``gateway/outbound/dkim.py``):

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.admin.dnsrecords import PUBLISHED_STATES as PUBLISHED_STATES
from gateway.admin.dnsrecords import CheckResult as CheckResult
from gateway.admin.dnsrecords import DnsRecord as DnsRecord
from gateway.admin.dnsrecords import check_records as check_records
from gateway.admin.dnsrecords import judge as judge
from gateway.admin.dnsrecords import mta_sts_policy as mta_sts_policy
from gateway.admin.dnsrecords import records as records
from gateway.admin.dnsrecords import require_domains as require_domains
from gateway.errors import UsageError
from gateway.models import Clinic, DkimKey
from gateway.outbound.dkim import ensure_domain_keys, generate_key

log = logging.getLogger("carebridge.domains")

# Per algorithm: the selector suffix (matches the outbound helper's ``cbYYYYMMDDe``/``r``).
KEY_ALGORITHMS = (("ed25519", "e"), ("rsa", "r"))
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


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
    from gateway.admin.clinics import get_clinic

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

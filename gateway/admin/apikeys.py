"""API keys for the integration REST API: shown once, stored only as a SHA-256 hash.

A key looks like ``cbk_<prefix>_<secret>``: the prefix (not secret) lets operators tell keys
apart in listings and logs; the whole value is hashed for lookup, and compared in constant
time. Roles: ``integration`` (EHR, lab: patients, messages, results, appointments, queues)
and ``admin`` (everything, including listing keys). A key may be tied to one organisation.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.crypto import hash_secret
from gateway.errors import NotFoundError, UsageError
from gateway.models import ApiKey, Organisation

ROLES = ("admin", "integration")
PREFIX = "cbk"


@dataclass(frozen=True)
class CreatedKey:
    value: str  # shown once to the operator; never stored
    row: ApiKey


async def create(
    session: AsyncSession,
    *,
    name: str,
    role: str,
    org_slug: str | None,
    now: datetime,
    actor: str,
) -> CreatedKey:
    if role not in ROLES:
        raise UsageError(f"role {role!r} is unknown; use one of: {', '.join(ROLES)}")
    if not name.strip() or len(name) > 100:
        raise UsageError("give the key a name of 1 to 100 characters (e.g. 'lab-system')")
    org_id = None
    if org_slug:
        org = await session.scalar(select(Organisation).where(Organisation.slug == org_slug))
        if org is None:
            raise NotFoundError(f"no organisation {org_slug!r}")
        org_id = org.id
    prefix = secrets.token_hex(4)
    value = f"{PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name.strip(),
        role=role,
        org_id=org_id,
        prefix=prefix,
        key_hash=hash_secret(value),
        created_at=now,
    )
    session.add(row)
    await session.flush()
    await audit.record(session, actor, "apikey.create", "api_key", row.id, at=now, role=role)
    return CreatedKey(value, row)


async def authenticate(session: AsyncSession, value: str, now: datetime) -> ApiKey | None:
    """The live key for a presented bearer value, or None."""
    if not value.startswith(PREFIX + "_") or len(value) > 128:
        return None
    digest = hash_secret(value)
    row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    row.last_used_at = now
    return row


async def list_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()


async def revoke(session: AsyncSession, key: str, *, now: datetime, actor: str) -> ApiKey:
    """Revoke by id or by prefix."""
    row = await session.scalar(select(ApiKey).where((ApiKey.id == key) | (ApiKey.prefix == key)))
    if row is None:
        raise NotFoundError(f"no API key {key!r}; see 'carebridge apikey list'")
    if row.revoked_at is None:
        row.revoked_at = now
        await session.flush()
        await audit.record(session, actor, "apikey.revoke", "api_key", row.id, at=now)
    return row

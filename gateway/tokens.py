"""Tokens for links and addresses: >= 128 bits from ``secrets``, stored only as hashes.

A token is bound to one purpose and one subject, expires (lifetime per purpose from
``[tokens]``), and is single-use where the purpose demands it. Looking a token up
(:func:`peek`) never consumes it: GET and HEAD requests and mail-scanner prefetches only peek;
only the person's POST calls :func:`consume`. Lookups go by SHA-256 of the token, and the
final comparison is constant-time.

One token per purpose and channel: a link and a reply address never share a secret. Where one
invitation offers two channels (the ``/r/`` link and the ``register+`` Reply-To), each gets its
own token and purpose, both carrying one ``pair_id``; using either single-use token uses the
whole pair (:func:`use`). Address tokens carry the clinic whose reply domain they work at.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import TokensConfig
from gateway.crypto import hash_secret
from gateway.errors import TokenError
from gateway.models import Token
from gateway.models.security import TOKEN_PURPOSES

# Purposes whose token may be used once only. Address tokens (reply/bounce) accept several
# messages (a patient may reply twice; a DSN may follow a delay notice).
SINGLE_USE = {"registration", "registration_reply", "password_reset"}
TOKEN_BYTES = 24  # 192 bits; base64url gives 32 characters
# A second channel of one invitation lives as long as its first.
_LIFETIME_OF = {"registration_reply": "registration"}


def lifetime(cfg: TokensConfig, purpose: str) -> timedelta:
    hours: int = getattr(cfg, f"{_LIFETIME_OF.get(purpose, purpose)}_hours")
    return timedelta(hours=hours)


@dataclass(frozen=True)
class IssuedToken:
    value: str  # goes into the email; never stored
    row: Token


async def issue(
    session: AsyncSession,
    cfg: TokensConfig,
    *,
    purpose: str,
    subject_kind: str,
    subject_id: str,
    now: datetime,
    data: dict[str, Any] | None = None,
    ttl: timedelta | None = None,
    clinic_id: str | None = None,
    pair_id: str | None = None,
) -> IssuedToken:
    if purpose not in TOKEN_PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    value = secrets.token_urlsafe(TOKEN_BYTES)
    row = Token(
        token_hash=hash_secret(value),
        purpose=purpose,
        subject_kind=subject_kind,
        subject_id=subject_id,
        data=data or {},
        clinic_id=clinic_id,
        pair_id=pair_id,
        single_use=purpose in SINGLE_USE,
        created_at=now,
        expires_at=now + (ttl or lifetime(cfg, purpose)),
        uses=0,
    )
    session.add(row)
    await session.flush()
    return IssuedToken(value, row)


def _well_formed(value: str) -> bool:
    return 20 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)


async def peek(session: AsyncSession, value: str, purpose: str, now: datetime) -> Token | None:
    """The live token for ``value`` and ``purpose``, or None. Never changes anything."""
    if not _well_formed(value):
        return None
    digest = hash_secret(value)
    row = await session.scalar(select(Token).where(Token.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    if row.purpose != purpose or row.expires_at <= now:
        return None
    if row.single_use and row.consumed_at is not None:
        return None
    return row


async def consume(session: AsyncSession, value: str, purpose: str, now: datetime) -> Token:
    """Use a token (the person's POST). Single-use tokens are consumed atomically."""
    row = await peek(session, value, purpose, now)
    if row is None:
        raise TokenError("this link is invalid, expired or already used")
    await use(session, row, now)
    return row


async def use(session: AsyncSession, row: Token, now: datetime) -> None:
    """Use a token already looked up (an address token named at RCPT time). A single-use
    token is consumed atomically, with every token of its pair: the invitation is spent,
    whichever channel spent it."""
    if row.expires_at <= now:
        raise TokenError("this link is invalid, expired or already used")
    if not row.single_use:
        row.uses += 1
        if row.consumed_at is None:
            row.consumed_at = now
        return
    # Compare-and-set: two concurrent uses cannot both consume one token.
    result = await session.execute(
        update(Token)
        .where(Token.id == row.id, Token.consumed_at.is_(None))
        .values(consumed_at=now, uses=Token.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise TokenError("this link is invalid, expired or already used")
    if row.pair_id is not None:
        await session.execute(
            update(Token)
            .where(Token.pair_id == row.pair_id, Token.id != row.id, Token.consumed_at.is_(None))
            .values(consumed_at=now)
            .execution_options(synchronize_session=False)
        )
    await session.refresh(row)


async def revoke_for_subject(
    session: AsyncSession, subject_kind: str, subject_id: str, purpose: str, now: datetime
) -> None:
    """Expire every live token of one purpose for a subject (e.g. after a password reset)."""
    await session.execute(
        update(Token)
        .where(
            Token.subject_kind == subject_kind,
            Token.subject_id == subject_id,
            Token.purpose == purpose,
            Token.expires_at > now,
        )
        .values(expires_at=now)
    )

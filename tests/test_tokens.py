"""Tokens: hashed at rest, bound to purpose and subject, expiring, single-use, peek is free."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway import tokens
from gateway.crypto import hash_secret
from gateway.errors import TokenError
from gateway.models import Token


async def issue(services, purpose="registration", **kw):
    async with services.transaction() as s:
        return await tokens.issue(
            s,
            services.config.tokens,
            purpose=purpose,
            subject_kind="patient",
            subject_id="p1",
            now=services.clock.now(),
            **kw,
        )


async def test_token_is_long_random_and_stored_only_as_hash(services):
    t = await issue(services)
    assert len(t.value) >= 32  # 192 bits in base64url
    async with services.sessions() as s:
        rows = (await s.scalars(select(Token))).all()
    assert len(rows) == 1
    assert rows[0].token_hash == hash_secret(t.value)
    assert t.value not in repr(rows[0].__dict__)


async def test_peek_never_consumes_and_consume_is_single_use(services):
    t = await issue(services)
    now = services.clock.now()
    for _ in range(5):
        async with services.transaction() as s:
            assert await tokens.peek(s, t.value, "registration", now) is not None
    async with services.transaction() as s:
        row = await tokens.consume(s, t.value, "registration", now)
        assert row.consumed_at is not None
    async with services.transaction() as s:
        with pytest.raises(TokenError):
            await tokens.consume(s, t.value, "registration", now)
        assert await tokens.peek(s, t.value, "registration", now) is None


async def test_purpose_binding_and_expiry(services, clock):
    t = await issue(services, purpose="password_reset")
    async with services.transaction() as s:
        assert await tokens.peek(s, t.value, "registration", clock.now()) is None
        assert await tokens.peek(s, t.value, "password_reset", clock.now()) is not None
    clock.advance(hours=services.config.tokens.password_reset_hours, seconds=1)
    async with services.transaction() as s:
        assert await tokens.peek(s, t.value, "password_reset", clock.now()) is None


async def test_malformed_and_unknown_values(services):
    async with services.transaction() as s:
        for bad in ["", "x", "a" * 500, "abc def ghi jkl mno pqr", "../../etc/passwd" * 3]:
            assert await tokens.peek(s, bad, "registration", services.clock.now()) is None


async def test_address_tokens_accept_several_uses(services):
    t = await issue(services, purpose="reply_address", data={"thread_id": "t1"})
    now = services.clock.now()
    for _ in range(3):
        async with services.transaction() as s:
            row = await tokens.consume(s, t.value, "reply_address", now)
    assert row.uses == 3 and row.data == {"thread_id": "t1"}


async def test_concurrent_consumers_only_one_wins(services):
    t = await issue(services)
    now = services.clock.now()

    async def attempt() -> bool:
        try:
            async with services.transaction() as s:
                await tokens.consume(s, t.value, "registration", now)
            return True
        except TokenError:
            return False

    results = await asyncio.gather(*(attempt() for _ in range(5)))
    assert sum(results) == 1


async def test_revoke_for_subject(services, clock):
    t = await issue(services, purpose="password_reset")
    async with services.transaction() as s:
        await tokens.revoke_for_subject(s, "patient", "p1", "password_reset", clock.now())
    clock.advance(seconds=1)
    async with services.transaction() as s:
        assert await tokens.peek(s, t.value, "password_reset", clock.now()) is None
    assert timedelta(hours=1) == tokens.lifetime(services.config.tokens, "password_reset")

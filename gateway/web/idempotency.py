"""``Idempotency-Key`` on every API POST, and a last-resort 500 problem document.

An integration that retries a POST after a timeout must not enrol a patient twice or post a
result twice. The first request with a key reserves it (a row with status 0), runs, and
stores its response; a repeat with the same key and the same request gets the stored
response back (``Idempotent-Replayed: true``); the same key with a different request is
refused (422), and a repeat while the first is still running gets 409. Server errors are not
stored, so the client may retry them. Keys are scoped to the API key that sent them and kept
for ``KEEP`` (the scheduler purges them afterwards).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.crypto import hash_secret
from gateway.models import ApiKey, IdempotencyRecord
from gateway.services import Services
from gateway.web.problems import MEDIA_TYPE, problem

log = logging.getLogger("carebridge.api")

KEEP = timedelta(hours=24)
HEADER = b"idempotency-key"


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return bytes(v).decode("latin-1")
    return None


def _valid_key(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(33 <= ord(c) <= 126 for c in key)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        key = _header(scope, HEADER)
        if key is None:
            await self.app(scope, receive, send)
            return
        if not _valid_key(key):
            await problem(
                400, "idempotency-key", "Idempotency-Key must be 1-255 visible ASCII characters"
            )(scope, receive, send)
            return
        api_key_id = await self._api_key_id(scope)
        if api_key_id is None:
            # Unauthenticated: let the route answer 401; nothing is stored.
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        digest = hashlib.sha256(
            b"POST\n" + str(scope.get("path", "")).encode() + b"\n" + body
        ).hexdigest()
        early = await self._reserve(api_key_id, key, digest)
        if early is not None:
            await early(scope, receive, send)
            return
        captured: dict[str, Any] = {"status": 500, "body": b"", "type": ""}

        async def replay_receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k == b"content-type":
                        captured["type"] = bytes(v).decode("latin-1")
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await self._forget(api_key_id, key)
            raise
        await self._store(api_key_id, key, captured)

    async def _api_key_id(self, scope: Scope) -> str | None:
        auth = _header(scope, b"authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        async with self.services.sessions() as session:
            row = await session.scalar(
                select(ApiKey).where(ApiKey.key_hash == hash_secret(value.strip()))
            )
        return row.id if row is not None and row.revoked_at is None else None

    async def _reserve(self, api_key_id: str, key: str, digest: str) -> Any:
        """None if this request now owns the key; otherwise the response to send instead."""
        now = self.services.clock.now()
        try:
            async with self.services.transaction() as session:
                row = await session.scalar(
                    select(IdempotencyRecord).where(
                        IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
                    )
                )
                if row is not None and row.expires_at <= now:
                    await session.delete(row)
                    await session.flush()
                    row = None
                if row is None:
                    session.add(
                        IdempotencyRecord(
                            api_key_id=api_key_id,
                            key=key,
                            request_hash=digest,
                            status_code=0,
                            response={},
                            created_at=now,
                            expires_at=now + KEEP,
                        )
                    )
                    await session.flush()
                    return None
                if row.request_hash != digest:
                    return problem(
                        422,
                        "idempotency-key-reused",
                        "this Idempotency-Key was used for a different request",
                    )
                if row.status_code == 0:
                    return problem(
                        409, "idempotency-in-progress", "a request with this key is in progress"
                    )
                return _replay(row)
        except IntegrityError:
            return problem(409, "idempotency-in-progress", "a request with this key is in progress")

    async def _store(self, api_key_id: str, key: str, captured: dict[str, Any]) -> None:
        status = int(captured["status"])
        try:
            doc = json.loads(captured["body"] or b"null")
        except ValueError:
            doc = None
        if status >= 500 or doc is None:
            await self._forget(api_key_id, key)
            return
        async with self.services.transaction() as session:
            row = await session.scalar(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
                )
            )
            if row is not None:
                row.status_code = status
                row.response = {"body": doc, "type": captured["type"] or "application/json"}

    async def _forget(self, api_key_id: str, key: str) -> None:
        async with self.services.transaction() as session:
            await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
                )
            )


def _replay(row: IdempotencyRecord) -> Any:
    from starlette.responses import Response

    return Response(
        json.dumps(row.response.get("body"), separators=(",", ":")).encode(),
        status_code=row.status_code,
        media_type=str(row.response.get("type", "application/json")),
        headers={"Idempotent-Replayed": "true"},
    )


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


class ProblemGuard:
    """Turns an unexpected exception into a PHI-free 500 problem instead of a traceback page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            # Only the exception's type is logged: its message might quote stored values.
            log.error("unexpected API error %s", type(exc).__name__)
            if started:
                raise
            await problem(500, "internal", "something went wrong on our side; try again later")(
                scope, receive, send
            )


__all__ = ["MEDIA_TYPE", "IdempotencyMiddleware", "ProblemGuard"]

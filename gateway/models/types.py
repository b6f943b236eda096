"""Column types: encrypted PHI, UTC timestamps and ids.

:class:`Encrypted` encrypts in ``process_bind_param`` with the key ring bound to the engine's
dialect (see :func:`gateway.db.bind_keyring`), so there is no global key and two engines with
different keys can live in one process (tests do this).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import DateTime, LargeBinary, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from gateway.crypto import KeyRing
from gateway.errors import KeyFileError

KEYRING_ATTR = "carebridge_keyring"


def keyring_of(dialect: Dialect) -> KeyRing:
    ring = getattr(dialect, KEYRING_ATTR, None)
    if ring is None:
        raise KeyFileError("no key ring bound to this database engine; refusing to touch PHI")
    assert isinstance(ring, KeyRing)
    return ring


class _EncryptedBase(TypeDecorator[Any]):
    impl = LargeBinary
    cache_ok = True

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def _encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def _decode(self, raw: bytes) -> Any:
        raise NotImplementedError

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return keyring_of(dialect).encrypt(self._encode(value), self.label)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._decode(keyring_of(dialect).decrypt(bytes(value), self.label))


class EncryptedText(_EncryptedBase):
    """A PHI string, stored as AES-256-GCM ciphertext with its key id."""

    cache_ok = True

    def _encode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError("EncryptedText takes str")
        return value.encode("utf-8")

    def _decode(self, raw: bytes) -> str:
        return raw.decode("utf-8")


class EncryptedBytes(_EncryptedBase):
    """PHI bytes (attachments, raw inbound mail)."""

    cache_ok = True

    def _encode(self, value: Any) -> bytes:
        return bytes(value)

    def _decode(self, raw: bytes) -> bytes:
        return raw


class EncryptedDate(_EncryptedBase):
    """A PHI date (date of birth)."""

    cache_ok = True

    def _encode(self, value: Any) -> bytes:
        if not isinstance(value, date):
            raise TypeError("EncryptedDate takes datetime.date")
        return value.isoformat().encode("ascii")

    def _decode(self, raw: bytes) -> date:
        return date.fromisoformat(raw.decode("ascii"))


class EncryptedJSON(_EncryptedBase):
    """A PHI JSON document (structured request fields, result values)."""

    cache_ok = True

    def _encode(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def _decode(self, raw: bytes) -> Any:
        return json.loads(raw)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


ID = String(32)

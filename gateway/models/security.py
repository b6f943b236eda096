"""Tokens and the audit log: the two tables every security promise leans on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import ID, UTCDateTime, new_id

TOKEN_PURPOSES = (
    "registration",
    "registration_reply",
    "view_thread",
    "password_reset",
    "unsubscribe",
    "reply_address",
    "bounce_address",
)


class Token(Base):
    """A link or address token. Only its SHA-256 is stored; the token itself is in the email."""

    __tablename__ = "token"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(32))
    subject_kind: Mapped[str] = mapped_column(String(16))  # patient, staff, notification, thread
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    # PHI-free binding data (thread id, clinic id, notification id).
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The clinic whose reply domain an address token works at (None: any, links only).
    clinic_id: Mapped[str | None] = mapped_column(String(64))
    # Tokens minted together for one purpose on several channels (a registration link and
    # its register+ reply address) share this id: using one single-use token uses all.
    pair_id: Mapped[str | None] = mapped_column(String(64), index=True)
    single_use: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    uses: Mapped[int] = mapped_column(Integer, default=0)


class AuditEvent(Base):
    """Append-only and hash-chained: ``hash = sha256(prev_hash + canonical row)``."""

    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(80))  # "staff:ID", "patient:ID", "cli", "system"
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(40), default="")
    object_id: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

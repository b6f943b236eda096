"""Inbound mail as received, and the quarantine for what may not enter a thread."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import ID, EncryptedBytes, EncryptedJSON, UTCDateTime, new_id


class InboundMessage(Base):
    __tablename__ = "inbound_message"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    # SHA-256 of the Message-ID header: deduplicates redelivery without storing it.
    message_id_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # smtp, imap
    # Which route matched (register, reply, bounce, postmaster, abuse) and the token row.
    route: Mapped[str] = mapped_column(String(32), default="")
    token_id: Mapped[str | None] = mapped_column(ID)
    raw: Mapped[bytes] = mapped_column(EncryptedBytes("inbound_message.raw"))
    size: Mapped[int] = mapped_column(default=0)
    # received (stored, not yet processed), filed, confirmed, bounce, quarantined, ignored,
    # kept (postmaster@, abuse@), discarded (raw erased by an operator)
    state: Mapped[str] = mapped_column(String(16), default="received")
    # Authentication verdicts only (pass/fail per mechanism), never addresses.
    auth: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    handler: Mapped[str | None] = mapped_column(String(40))
    thread_id: Mapped[str | None] = mapped_column(ForeignKey("thread.id"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # The clinic whose reply domain the recipient was on (None for IMAP until routed).
    clinic_id: Mapped[str | None] = mapped_column(ForeignKey("clinic.id"), index=True)
    # SMTP envelope (MAIL FROM, peer IP, HELO): addresses are PHI, so encrypted. SPF needs it.
    envelope: Mapped[dict[str, Any] | None] = mapped_column(
        EncryptedJSON("inbound_message.envelope")
    )
    # Keyed blind index of the From address: counts automated mail per sender per day.
    sender_index: Mapped[str | None] = mapped_column(String(64), index=True)
    # PHI-free outcome detail (reason code, handler verdict).
    detail: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when a node adopts a ``received`` row its storing node left behind (a sweep on
    # every node): until then no other sweeping node takes it (gateway/inbound/intake.py).
    adopted_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ImapMailboxState(Base):
    """Where an IMAP poller got to: UIDVALIDITY and the highest UID committed to the store."""

    __tablename__ = "imap_mailbox_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # the [imap.NAME] section
    folder: Mapped[str] = mapped_column(String(200))
    uidvalidity: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    last_uid: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuarantineItem(Base):
    __tablename__ = "quarantine_item"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    inbound_id: Mapped[str] = mapped_column(ForeignKey("inbound_message.id"), index=True)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)  # PHI-free explanation
    state: Mapped[str] = mapped_column(String(16), default="held")  # held, released, discarded
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(64))

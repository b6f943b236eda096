"""Threads, messages and attachments: where every word of clinical content lives, encrypted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import (
    ID,
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    UTCDateTime,
    new_id,
)


class Thread(Base):
    __tablename__ = "thread"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pool.id"), index=True)
    request_type: Mapped[str] = mapped_column(String(40), default="question")
    subject: Mapped[str] = mapped_column(EncryptedText("thread.subject"))
    # Typed request fields (reason, preferred times, medication, pharmacy): PHI.
    details: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON("thread.details"))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open, closed
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    assigned_staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id"))
    sla_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # When the running SLA clock started and when its 75% warning falls (None: clock stopped).
    sla_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sla_warn_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    sla_warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sla_breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    patient_unread: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Message(Base):
    __tablename__ = "message"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("thread.id"), index=True)
    author_kind: Mapped[str] = mapped_column(String(16))  # patient, staff, system, integration
    author_id: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(EncryptedText("message.body"))
    internal: Mapped[bool] = mapped_column(Boolean, default=False)  # staff note, never shown
    source: Mapped[str] = mapped_column(String(16), default="portal")  # portal, email, api
    inbound_id: Mapped[str | None] = mapped_column(ForeignKey("inbound_message.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Attachment(Base):
    __tablename__ = "attachment"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("message.id"), index=True)
    filename: Mapped[str] = mapped_column(EncryptedText("attachment.filename"))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(EncryptedBytes("attachment.data"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

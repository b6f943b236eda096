"""Care-team tables: appointments to remind, quick replies, and API idempotency records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import ID, UTCDateTime, new_id


class Appointment(Base):
    """An appointment the EHR told us about; the scheduler sends reminders before it.

    Each reminder has its own "sent" column, set by compare-and-set, so even two schedulers
    racing (which leader election already prevents) could not send one twice.
    """

    __tablename__ = "appointment"
    __table_args__ = (UniqueConstraint("clinic_id", "external_id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    # The integration's own id for the appointment (not PHI: an opaque reference), optional.
    external_id: Mapped[str | None] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reminded_48h_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reminded_2h_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuickReply(Base):
    """A clinic's canned answer; staff pick one and edit it before sending. Holds no PHI."""

    __tablename__ = "quick_reply"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """The first response to a POST with an ``Idempotency-Key``, replayed for repeats.

    Keyed by API key and the client's key, so two integrations can never see each other's
    responses. Responses hold ids and states only (the API never echoes PHI).
    """

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("api_key_id", "key"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_key.id"), index=True)
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of method, path and body: the same key with a different request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

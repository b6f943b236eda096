"""The outbound queue: one notification row per email, claimed by delivery workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import ID, EncryptedText, UTCDateTime, new_id

NOTIFICATION_STATES = ("queued", "sending", "sent", "deferred", "bounced", "failed", "cancelled")


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_due", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patient.id"), index=True)
    staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    language: Mapped[str] = mapped_column(String(8), default="en")
    recipient: Mapped[str] = mapped_column(EncryptedText("notification.recipient"))
    recipient_domain_hash: Mapped[str] = mapped_column(String(64), default="")
    # PHI-free render context (counts, kinds, times); links are minted at render time.
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    coalesce_key: Mapped[str | None] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    bounce_token_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Dead-letter deadline: set at the first claim from [delivery] max_age_hours; an
    # operator's 'queue retry' restarts it.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

"""Web sessions, throttles, results and the education library: the patient portal's tables.

Sessions live server-side so a sign-out or an idle timeout really ends them (a signed cookie
alone cannot be revoked). The session id in the cookie is stored here only as a SHA-256, so a
copy of the database does not hand out live sessions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import ID, EncryptedJSON, EncryptedText, UTCDateTime, new_id


class WebSession(Base):
    __tablename__ = "web_session"

    # SHA-256 of the random session id carried (signed) in the cookie.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_kind: Mapped[str] = mapped_column(String(16))  # patient, staff
    principal_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # absolute timeout


class Throttle(Base):
    """Counts attempts per (scope, keyed hash) so sign-in and enrolment can be rate-limited.

    The key is a blind index (an HMAC), never an address or a name, and the same row is used
    whether or not a person exists, so the throttle itself reveals nothing.
    """

    __tablename__ = "throttle"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(32))  # signin, enrol, enrol-ip, reset
    key: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


RESULT_KINDS = ("lab", "imaging", "test")


class Result(Base):
    """A lab or test result. Patients see it only once released and not on hold."""

    __tablename__ = "result"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="lab")
    # Test name, value, units, reference range, comment: all PHI.
    title: Mapped[str] = mapped_column(EncryptedText("result.title"))
    data: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON("result.data"))
    # Sensitive results (e.g. HIV, genetic) wait for a clinician to release them by hand.
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    released_by: Mapped[str | None] = mapped_column(String(80))
    source: Mapped[str] = mapped_column(String(16), default="staff")  # staff, integration
    patient_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Article(Base):
    """An education-library article: general health information, not PHI."""

    __tablename__ = "article"
    __table_args__ = (UniqueConstraint("slug", "language"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(80))
    language: Mapped[str] = mapped_column(String(8), default="en")
    topic: Mapped[str] = mapped_column(String(40), index=True)
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(String(500), default="")
    body: Mapped[str] = mapped_column(String(20000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArticleAssignment(Base):
    """An article a clinician assigned to a patient; the note may be clinical, so encrypted."""

    __tablename__ = "article_assignment"
    __table_args__ = (UniqueConstraint("patient_id", "article_slug"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    article_slug: Mapped[str] = mapped_column(String(80))
    assigned_by: Mapped[str] = mapped_column(String(80))
    note: Mapped[str | None] = mapped_column(EncryptedText("article_assignment.note"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


__all__ = [
    "Article",
    "ArticleAssignment",
    "Result",
    "Throttle",
    "WebSession",
]

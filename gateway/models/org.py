"""Organisations, clinics, staff, pools and routing rules: who is on the clinic's side."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import ID, EncryptedText, UTCDateTime, new_id


class Organisation(Base):
    __tablename__ = "organisation"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Clinic(Base):
    __tablename__ = "clinic"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id"), index=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    # Display name appears in PHI-free emails; it names the clinic, never a patient.
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # {"mon": ["08:00", "17:00"], ...}; a missing day is closed.
    business_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # ISO dates the clinic is closed, plus an optional country code for the holidays library.
    holidays: Mapped[list[str]] = mapped_column(JSON, default=list)
    holiday_country: Mapped[str] = mapped_column(String(8), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    enrolment_code: Mapped[str] = mapped_column(String(32), unique=True, default="")
    sending_domain: Mapped[str] = mapped_column(String(253), default="")
    reply_domain: Mapped[str] = mapped_column(String(253), default="", index=True)
    phone: Mapped[str] = mapped_column(String(40), default="")
    branding: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tls_required: Mapped[bool] = mapped_column(Boolean, default=False)
    staff_email_replies: Mapped[bool] = mapped_column(Boolean, default=False)
    # Red-flag terms the clinic adds to the default urgent-content lexicon.
    urgent_terms: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Reply deadline, in business minutes, for a request flagged urgent (by the screen or staff).
    urgent_sla_minutes: Mapped[int] = mapped_column(Integer, default=60)
    # Who gets the staff notice for a request landing where no member watches (None: the first
    # active clinic admin, else provider). A plain id, not a foreign key: staff rows point at
    # their clinic, and a key both ways would make the two tables a cycle.
    fallback_staff_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


STAFF_ROLES = ("provider", "nurse", "front_desk", "clinic_admin", "operator")


class Staff(Base):
    __tablename__ = "staff"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    # Operators may span clinics; everyone else belongs to one.
    clinic_id: Mapped[str | None] = mapped_column(ForeignKey("clinic.id"), index=True)
    name: Mapped[str] = mapped_column(EncryptedText("staff.name"))
    email: Mapped[str] = mapped_column(EncryptedText("staff.email"))
    email_index: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200), default="")
    totp_secret: Mapped[str | None] = mapped_column(EncryptedText("staff.totp_secret"))
    # The last TOTP time step accepted: a code is good once, not again within its window.
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    preferences: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Pool(Base):
    __tablename__ = "pool"
    __table_args__ = (UniqueConstraint("clinic_id", "slug"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    slug: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    supervisor_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PoolMember(Base):
    __tablename__ = "pool_member"

    pool_id: Mapped[str] = mapped_column(ForeignKey("pool.id"), primary_key=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"), primary_key=True)


REQUEST_TYPES = ("appointment", "medication_renewal", "immunization_record", "question")


class RoutingRule(Base):
    """Which pool a request type goes to, in order; kept as data so admins can edit it."""

    __tablename__ = "routing_rule"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    request_type: Mapped[str] = mapped_column(String(40))
    pool_id: Mapped[str] = mapped_column(ForeignKey("pool.id"))
    sla_hours: Mapped[int | None] = mapped_column(Integer)


class DkimKey(Base):
    """A DKIM key of a clinic's sending domain; the private half is encrypted like PHI."""

    __tablename__ = "dkim_key"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    domain: Mapped[str] = mapped_column(String(253))
    selector: Mapped[str] = mapped_column(String(63))
    algorithm: Mapped[str] = mapped_column(String(16))  # "ed25519" or "rsa"
    private_key: Mapped[str] = mapped_column(EncryptedText("dkim_key.private_key"))
    public_key: Mapped[str] = mapped_column(Text)  # base64 for the DNS p= tag
    state: Mapped[str] = mapped_column(String(16), default="active")  # pending/active/retired
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))  # "admin" or "integration"
    org_id: Mapped[str | None] = mapped_column(ForeignKey("organisation.id"))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

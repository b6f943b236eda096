"""Patients (one identity across an organisation) and their enrolments at clinics."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, utcnow
from gateway.models.types import (
    ID,
    EncryptedDate,
    EncryptedJSON,
    EncryptedText,
    UTCDateTime,
    new_id,
)


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("org_id", "email_index"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id"), index=True)
    given_name: Mapped[str] = mapped_column(EncryptedText("patient.given_name"))
    family_name: Mapped[str] = mapped_column(EncryptedText("patient.family_name"))
    date_of_birth: Mapped[date] = mapped_column(EncryptedDate("patient.date_of_birth"))
    email: Mapped[str] = mapped_column(EncryptedText("patient.email"))
    # HMAC of the normalised address: the only way to find a patient by address.
    email_index: Mapped[str] = mapped_column(String(64), index=True)
    phone: Mapped[str | None] = mapped_column(EncryptedText("patient.phone"))
    # The patient's medication list and other structured clinical details.
    clinical: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON("patient.clinical"))
    language: Mapped[str] = mapped_column(String(8), default="en")
    # pending (email or terms outstanding), active, disabled
    status: Mapped[str] = mapped_column(String(16), default="pending")
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    terms_version: Mapped[str | None] = mapped_column(String(32))
    terms_agreed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_hash: Mapped[str] = mapped_column(String(200), default="")
    totp_secret: Mapped[str | None] = mapped_column(EncryptedText("patient.totp_secret"))
    # The last TOTP time step accepted: a code is good once, not again within its window.
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    # ok, soft, hard, policy: set from bounces
    deliverability: Mapped[str] = mapped_column(String(16), default="ok")
    notification_prefs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Enrolment(Base):
    """A patient's membership of a clinic; ended rows stay so a move keeps its history."""

    __tablename__ = "enrolment"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # desk, online, api, cli, demo
    enrolled_by: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


CONNECTION_STATES = ("pending", "approved", "declined")


class ClinicConnectionRequest(Base):
    """A clinic asked to care for a patient who is enrolled at another clinic.

    Enrolling an address that already belongs to someone else's patient never moves or shows
    that patient: it leaves one of these rows and a PHI-free email, and nothing changes until
    the patient approves in the portal. ``home_clinic_id`` is where the patient was when asked,
    so both clinics' admins find the request in their audit view.
    """

    __tablename__ = "clinic_connection_request"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinic.id"), index=True)
    home_clinic_id: Mapped[str | None] = mapped_column(ForeignKey("clinic.id"), index=True)
    requested_by: Mapped[str] = mapped_column(String(80))  # "staff:ID", "apikey:ID", "cli"
    source: Mapped[str] = mapped_column(String(16))  # desk, api, cli
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

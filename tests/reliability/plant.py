"""Plant canary PHI in every encrypted column of the store, in bulk, through the models.

Used by the short canary test (a few thousand records) and by ``bench/canary.py`` (the full
count). Every row goes through the ORM, so values pass the same encrypted column types that
production writes use; nothing is written with raw SQL.

:func:`encrypted_columns` lists every column whose type encrypts (the store's own definition of
"a PHI field"); :func:`coverage_gaps` says which of them the planted world left empty, so a new
PHI column that nobody plants canaries into fails the suite instead of going unchecked.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import Boolean, Date, Integer, String, func, insert, select
from sqlalchemy.sql.schema import Table

from gateway.admin import clinics
from gateway.models import (
    Attachment,
    Base,
    Clinic,
    Enrolment,
    InboundMessage,
    Message,
    Notification,
    Patient,
    QuarantineItem,
    Staff,
    Thread,
)
from gateway.models.types import (
    EncryptedBytes,
    EncryptedDate,
    EncryptedJSON,
    UTCDateTime,
    _EncryptedBase,
)
from gateway.portal import patients
from gateway.services import Services
from tests.reliability import canary

# Tables written explicitly below; every other table with an encrypted column is filled by
# :func:`_generic_row` (so PHI tables other areas add are planted without editing this file).
EXPLICIT = {
    "patient",
    "enrolment",
    "thread",
    "message",
    "attachment",
    "inbound_message",
    "quarantine_item",
    "notification",
    "staff",
}


@dataclass
class Planted:
    clinic: Clinic
    patient_ids: list[str]
    staff_ids: list[str]
    records: int


def encrypted_columns() -> list[str]:
    out = []
    for table in Base.metadata.sorted_tables:
        for col in table.columns:
            if isinstance(col.type, _EncryptedBase):
                out.append(f"{table.name}.{col.name}")
    return out


async def coverage_gaps(services: Services) -> list[str]:
    """Encrypted columns with no planted (non-null) value anywhere."""
    gaps = []
    async with services.sessions() as s:
        for name in encrypted_columns():
            tname, cname = name.split(".")
            table = Base.metadata.tables[tname]
            col = table.c[cname]
            n = await s.scalar(select(func.count()).select_from(table).where(col.isnot(None)))
            if not n:
                gaps.append(name)
    return gaps


def _raw_mail(i: int, reply_domain: str) -> bytes:
    return (
        f"From: {canary.given_name(i)} {canary.family_name(i)} <{canary.email_address(i)}>\r\n"
        f"To: reply+x@{reply_domain}\r\n"
        f"Subject: {canary.text(i, 'subject')}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@example.org>\r\n\r\n"
        f"{canary.text(i, 'body')}\r\n"
    ).encode()


async def plant(services: Services, patients: int, *, batch: int = 250) -> Planted:
    """Create one clinic and ``patients`` patients each with a full set of PHI-bearing rows."""
    now = services.clock.now()
    async with services.transaction() as s:
        org = await clinics.get_or_create_org(s, "canary-org", "Canary Org", "test")
        slug = f"canary-{secrets.token_hex(3)}"
        clinic = await clinics.add_clinic(
            s,
            org=org,
            slug=slug,
            name="Canary Test Clinic",
            reply_domain=f"reply.{slug}.example",
            sending_domain=f"{slug}.example",
            actor="test",
        )
        staff = Staff(
            clinic_id=clinic.id,
            name=f"{canary.MARKERS['staff_name']}0",
            email=canary.email_address(999999, "clinic.example"),
            email_index=secrets.token_hex(32),
            role="nurse",
            totp_secret=canary.text(0, "totp"),
        )
        s.add(staff)
        await s.flush()
    patient_ids: list[str] = []
    records = 2
    for start in range(0, patients, batch):
        async with services.transaction() as s:
            for i in range(start, min(patients, start + batch)):
                records += await _plant_one(s, services, clinic, staff, i, now)
                patient_ids.append(s.info["last_patient"])
    return Planted(clinic, patient_ids, [staff.id], records)


async def _plant_one(s, services: Services, clinic: Clinic, staff: Staff, i: int, now) -> int:  # type: ignore[no-untyped-def]
    p = Patient(
        org_id=clinic.org_id,
        given_name=canary.given_name(i),
        family_name=canary.family_name(i),
        date_of_birth=canary.CANARY_DOB,
        email=canary.email_address(i),
        email_index=patients.email_index(services.keyring, canary.email_address(i)),
        phone=canary.phone(i),
        clinical={"medications": [canary.text(i, "medication")]},
        totp_secret=canary.text(i, "totp"),
        status="active",
        notification_prefs={},
    )
    s.add(p)
    await s.flush()
    s.info["last_patient"] = p.id
    s.add(Enrolment(patient_id=p.id, clinic_id=clinic.id, source="desk", started_at=now))
    t = Thread(
        clinic_id=clinic.id,
        patient_id=p.id,
        request_type="medication_renewal",
        subject=canary.text(i, "subject"),
        details={"medication": canary.text(i, "detail"), "pharmacy": canary.family_name(i)},
        created_at=now,
        updated_at=now,
    )
    s.add(t)
    inbound = InboundMessage(
        source="smtp",
        route="reply",
        raw=_raw_mail(i, clinic.reply_domain),
        size=0,
        state="quarantined",
        clinic_id=clinic.id,
        envelope={"mail_from": canary.email_address(i), "helo": "mx.example.org"},
        detail="planted",
        received_at=now,
    )
    s.add(inbound)
    await s.flush()
    m = Message(
        thread_id=t.id,
        author_kind="patient",
        author_id=p.id,
        body=canary.text(i, "body"),
        source="email",
        inbound_id=inbound.id,
        created_at=now,
    )
    s.add(m)
    await s.flush()
    s.add(
        Attachment(
            message_id=m.id,
            filename=f"{canary.MARKERS['filename']}{i}.pdf",
            content_type="application/pdf",
            size=10,
            data=canary.text(i, "attachment").encode(),
        )
    )
    s.add(QuarantineItem(inbound_id=inbound.id, reason="auth_failed", detail="planted"))
    s.add(
        Notification(
            clinic_id=clinic.id,
            patient_id=p.id,
            kind="new_message",
            recipient=canary.email_address(i),
            recipient_domain_hash="x",
            context={"kind": "new_message", "count": 1},
            state="sent",
            next_attempt_at=now,
            created_at=now,
        )
    )
    ids = {
        "patient": p.id,
        "clinic": clinic.id,
        "organisation": clinic.org_id,
        "thread": t.id,
        "message": m.id,
        "staff": staff.id,
        "inbound_message": inbound.id,
    }
    n = 8
    for table in generic_tables():
        row = _generic_row(table, ids, i, now)
        if row is not None:
            await s.execute(insert(table).values(row))
            n += 1
    return n


def generic_tables() -> list[Table]:
    return [
        t
        for t in Base.metadata.sorted_tables
        if t.name not in EXPLICIT and any(isinstance(c.type, _EncryptedBase) for c in t.columns)
    ]


def _canary_value(col_type: _EncryptedBase, i: int, what: str) -> object:
    if isinstance(col_type, EncryptedDate):
        return canary.CANARY_DOB
    if isinstance(col_type, EncryptedBytes):
        return canary.text(i, what).encode()
    if isinstance(col_type, EncryptedJSON):
        return {"value": canary.text(i, what), "who": canary.family_name(i)}
    return canary.text(i, what)


def _generic_row(table: Table, ids: dict[str, str], i: int, now) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    """A row with canaries in every encrypted column and plausible values elsewhere."""
    row: dict[str, object] = {}
    for col in table.columns:
        if isinstance(col.type, _EncryptedBase):
            row[col.name] = _canary_value(col.type, i, f"{table.name}.{col.name}")
            continue
        fks = list(col.foreign_keys)
        if fks:
            target = fks[0].column.table.name
            if target in ids:
                row[col.name] = ids[target]
            elif not col.nullable:
                return None  # cannot satisfy this reference; coverage_gaps will say so
            continue
        if col.primary_key or col.default is not None or col.server_default is not None:
            continue
        if not col.nullable:
            row[col.name] = now if isinstance(col.type, UTCDateTime) else _filler(col, i)
    return row


def _filler(col, i: int) -> object:  # type: ignore[no-untyped-def]
    t = col.type
    if isinstance(t, Boolean):
        return False
    if isinstance(t, Integer):
        return 0
    if isinstance(t, Date):
        return canary.CANARY_DOB
    if isinstance(t, String):
        return f"p{i}-{secrets.token_hex(4)}"[: t.length or 64]
    return {}

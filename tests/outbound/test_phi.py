"""No PHI leaves the store: canaries planted in every PHI field never appear in any byte of
any outbound SMTP session (either direction, as it crossed the wire), in any decoded header
or body part, or in any log line. The patient's address appears only where it must: RCPT TO
and the To header."""

from __future__ import annotations

import logging
from datetime import date

from sqlalchemy import select

from gateway.careteam import threads
from gateway.models import Pool, PoolMember
from gateway.outbound import notify
from gateway.outbound.notify import Kind, Notice
from gateway.portal.invitations import invite
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT

from .helpers import deliver_all, parse

CANARY_PHONE = "+1-555-0199-7734"
CANARY_DOB = date(1931, 2, 3)
CANARIES = [
    CANARY_GIVEN,
    CANARY_FAMILY,
    CANARY_TEXT,
    "CANARY-PHI",
    CANARY_PHONE,
    "0199-7734",
    # The date of birth in the forms a template could print it (a bare "1931" would also
    # match random hex in boundaries and tokens: a false alarm once in a few runs).
    "1931-02-03",
    "02/03/1931",
    "3 Feb 1931",
    "19310203",
    "Canaryfield",
]


def _decoded(data: bytes) -> str:
    """Every header (RFC 2047 decoded) and every body part (transfer-decoded) of a message."""
    msg = parse(data)
    out = [f"{k}: {v}" for k, v in msg.items()]
    for part in msg.walk():
        if not part.is_multipart():
            out.append(str(part.get_content()))
    return "\n".join(out)


async def test_canaries_never_reach_the_wire_or_the_logs(
    services, world, sink, relay_to, clock, caplog
):
    caplog.set_level(logging.DEBUG, logger="carebridge")
    svc = relay_to(services, sink.port)
    clinic = await world.clinic()
    nurse = await world.staff(clinic, role="nurse", name=f"Nurse {CANARY_FAMILY}")
    patient = await world.patient(
        clinic,
        given_name=CANARY_GIVEN,
        family_name=CANARY_FAMILY,
        email=CANARY_EMAIL,
        date_of_birth=CANARY_DOB,
        phone=CANARY_PHONE,
    )
    async with svc.transaction() as s:
        pool = await s.scalar(
            select(Pool).where(Pool.clinic_id == clinic.id, Pool.slug == "refills")
        )
        await s.merge(PoolMember(pool_id=pool.id, staff_id=nurse.id))
    async with svc.transaction() as s:
        await invite(s, svc, patient=patient, clinic=clinic)
    thread = await world.thread(
        clinic,
        patient,
        request_type="medication_renewal",
        subject=f"{CANARY_TEXT} subject",
        body=f"{CANARY_TEXT} body, call me at {CANARY_PHONE}",
        details={"medication": CANARY_TEXT, "pharmacy": CANARY_FAMILY},
        urgent=True,
        actor=f"patient:{patient.id}",
    )
    async with svc.transaction() as s:
        await threads.post_staff_message(
            s, svc, thread=thread, staff=nurse, body=f"{CANARY_TEXT}: {CANARY_GIVEN}, results"
        )
        for kind in (Kind.NEW_RESULT, Kind.APPOINTMENT_REMINDER, Kind.PASSWORD_RESET):
            await notify.enqueue(
                s,
                svc.keyring,
                notice=Notice(kind=kind),
                clinic_id=clinic.id,
                recipient=patient.email,
                now=clock.now(),
                patient_id=patient.id,
            )
        # Nobody left in silence: the "reply not delivered" notice to the patient and the
        # "request nobody watches" notice to staff carry a thread (and pool), never its words.
        await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.REPLY_NOT_DELIVERED, thread_id=thread.id),
            clinic_id=clinic.id,
            recipient=patient.email,
            now=clock.now(),
            patient_id=patient.id,
        )
        await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(
                kind=Kind.UNWATCHED_REQUEST, urgent_count=1, thread_id=thread.id, pool_id=pool.id
            ),
            clinic_id=clinic.id,
            recipient=nurse.email,
            now=clock.now(),
            staff_id=nurse.id,
        )
    await deliver_all(svc)
    clock.advance(days=1)  # past every coalescing window and digest schedule
    await deliver_all(svc)

    kinds_sent = len(sink.messages)
    # invitation, ack, digest, message, result, reminder, reset, reply not delivered, unwatched
    assert kinds_sent >= 9, kinds_sent
    wire = (bytes(sink.raw) + bytes(sink.raw_replies)).lower()
    decoded = "\n".join(_decoded(m[2]) for m in sink.messages).lower()
    # Our own log lines (the sink's aiosmtpd logs the dialogue: it is the peer, not us).
    ours = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("carebridge")
    ).lower()
    assert "sent" in ours
    for canary in CANARIES:
        assert canary.lower().encode() not in wire, canary
        assert canary.lower() not in decoded, canary
        assert canary.lower() not in ours, canary
    # The address is needed to deliver: RCPT TO and To, nowhere else (not even in logs).
    to_patient = sum(1 for m in sink.messages if m[1] == [CANARY_EMAIL])
    assert to_patient >= 7
    assert wire.count(CANARY_EMAIL.lower().encode()) == 2 * to_patient
    assert CANARY_EMAIL.lower() not in ours

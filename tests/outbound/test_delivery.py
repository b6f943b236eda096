"""Delivery through real SMTP peers on loopback: retries, bounces, TLS policy, leases, MX."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import func, select, update

from gateway.models import Clinic, Notification, Patient, Pool, Token
from gateway.outbound import notify, queue
from gateway.outbound.delivery import DeliveryPart
from gateway.outbound.notify import Kind, Notice
from gateway.portal.invitations import invite

from .helpers import deliver_all, notification, parse, text_of


async def _invited(svc, world, **clinic_kw):
    clinic = await world.clinic(**clinic_kw)
    patient = await world.patient(clinic)
    async with svc.transaction() as s:
        row = await invite(s, svc, patient=patient, clinic=clinic)
    return clinic, patient, row.id


async def test_451_is_retried_with_growing_delays_then_delivered(
    services, world, start_sink, relay_to, clock
):
    sink = await start_sink(rcpt_reply="451 4.3.0 Try again later")
    svc = relay_to(services, sink.port, base_backoff_seconds=60, max_backoff_seconds=100000)
    _clinic, _patient, nid = await _invited(svc, world)
    part = DeliveryPart(svc)
    delays = []
    try:
        for attempt in range(1, 5):
            assert await part.run_once("w") == 1
            row = await notification(svc, nid)
            assert (row.state, row.attempts) == ("deferred", attempt)
            assert row.last_error == "451 send refused 4.3.0"
            delays.append((row.next_attempt_at - clock.now()).total_seconds())
            # Not due before its time...
            clock.advance(seconds=delays[-1] - 1)
            assert await part.run_once("w") == 0
            clock.advance(seconds=1)
        assert sink.rcpt_attempts == 4
        assert all(later > earlier for earlier, later in itertools.pairwise(delays))
        assert 45 <= delays[0] <= 60
        sink.rcpt_reply = None
        assert await part.run_once("w") == 1
    finally:
        await part.transport.close()
    row = await notification(svc, nid)
    assert row.state == "sent" and row.attempts == 5 and row.last_error is None
    assert len(sink.messages) == 1


async def test_550_bounces_at_once_and_is_never_retried(
    services, world, start_sink, relay_to, clock
):
    # Servers echo the address in their text: it must not reach last_error (PHI).
    sink = await start_sink(rcpt_reply="550 5.1.1 <someone@example.org>: user unknown")
    svc = relay_to(services, sink.port)
    _clinic, patient, nid = await _invited(svc, world)
    await deliver_all(svc)
    row = await notification(svc, nid)
    assert row.state == "bounced"
    assert row.last_error == "550 send refused 5.1.1"
    clock.advance(days=2)
    await deliver_all(svc)
    assert sink.rcpt_attempts == 1
    async with svc.sessions() as s:
        assert (await s.get(Patient, patient.id)).deliverability == "hard"


async def test_still_failing_after_max_age_is_dead_lettered_and_can_be_retried(
    services, world, start_sink, relay_to, clock
):
    sink = await start_sink(rcpt_reply="421 4.7.0 Too busy")
    svc = relay_to(services, sink.port, max_age_hours=1, base_backoff_seconds=600)
    _clinic, _patient, nid = await _invited(svc, world)
    for _ in range(10):
        await deliver_all(svc)
        row = await notification(svc, nid)
        if row.state == "failed":
            break
        clock.set(row.next_attempt_at)
    assert row.state == "failed"
    assert row.attempts >= 2
    async with svc.transaction() as s:
        assert await queue.retry(s, state="failed", now=clock.now(), cfg=svc.config.delivery) == 1
    sink.rcpt_reply = None
    await deliver_all(svc)
    assert (await notification(svc, nid)).state == "sent"


async def test_tls_required_and_no_starttls_means_nothing_in_clear(services, world, sink, relay_to):
    svc = relay_to(services, sink.port)
    clinic, patient, nid = await _invited(svc, world)
    async with svc.transaction() as s:
        await s.execute(update(Clinic).where(Clinic.id == clinic.id).values(tls_required=True))
    await deliver_all(svc)
    row = await notification(svc, nid)
    assert row.state == "deferred"
    assert "STARTTLS" in row.last_error
    raw = bytes(sink.raw)
    assert raw.startswith(b"EHLO ")
    for forbidden in (b"MAIL FROM", b"RCPT", b"DATA", patient.email.encode(), b"bounce+"):
        assert forbidden not in raw
    assert sink.messages == []


async def test_tls_required_with_verified_starttls_delivers_only_encrypted(
    services, world, start_sink, relay_to, tls_ca, tmp_path
):
    sink = await start_sink(tls_ca=tls_ca)
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    svc = relay_to(services, sink.port, tls_ca_file=str(ca_file))
    clinic, patient, nid = await _invited(svc, world)
    async with svc.transaction() as s:
        await s.execute(update(Clinic).where(Clinic.id == clinic.id).values(tls_required=True))
    await deliver_all(svc)
    assert (await notification(svc, nid)).state == "sent"
    assert len(sink.messages) == 1
    raw = bytes(sink.raw)
    assert b"STARTTLS" in raw
    assert b"MAIL FROM" not in raw and patient.email.encode() not in raw


async def test_tls_required_with_an_untrusted_certificate_is_deferred(
    services, world, start_sink, relay_to, tls_ca
):
    sink = await start_sink(tls_ca=tls_ca)  # its CA is not in tls_ca_file
    svc = relay_to(services, sink.port)
    clinic, _patient, nid = await _invited(svc, world)
    async with svc.transaction() as s:
        await s.execute(update(Clinic).where(Clinic.id == clinic.id).values(tls_required=True))
    await deliver_all(svc)
    row = await notification(svc, nid)
    assert row.state == "deferred" and "TLS" in row.last_error
    assert sink.messages == [] and b"MAIL FROM" not in bytes(sink.raw)


async def test_opportunistic_tls_when_offered(services, world, start_sink, relay_to, tls_ca):
    sink = await start_sink(tls_ca=tls_ca)
    svc = relay_to(services, sink.port)
    _clinic, _patient, nid = await _invited(svc, world)
    await deliver_all(svc)
    assert (await notification(svc, nid)).state == "sent"
    assert b"STARTTLS" in bytes(sink.raw) and b"MAIL FROM" not in bytes(sink.raw)


async def test_connection_refused_is_deferred(services, world, relay_to, free_port):
    svc = relay_to(services, free_port())
    _clinic, _patient, nid = await _invited(svc, world)
    await deliver_all(svc)
    row = await notification(svc, nid)
    assert row.state == "deferred" and row.last_error.startswith("connect:")


async def test_a_killed_workers_claim_runs_out_and_the_row_is_sent(
    services, world, sink, relay_to, clock
):
    svc = relay_to(services, sink.port, lease_seconds=300)
    _clinic, _patient, nid = await _invited(svc, world)
    async with svc.transaction() as s:
        claimed = await queue.claim(
            s, svc.config.delivery, worker="killed", now=clock.now(), limit=10
        )
    assert [r.id for r in claimed] == [nid]
    # The worker dies here. Until its lease runs out nobody else touches the row...
    await deliver_all(svc)
    assert (await notification(svc, nid)).state == "sending"
    clock.advance(seconds=301)
    await deliver_all(svc)
    row = await notification(svc, nid)
    assert row.state == "sent" and row.attempts == 2
    assert len(sink.messages) == 1


async def test_direct_delivery_to_mx_found_through_configured_dns(
    services, world, sink, dns_server, with_config
):
    svc = with_config(
        services,
        delivery={"relay": "", "maildir": "", "mx_port": sink.port},
        dns={"nameservers": (dns_server.nameserver,)},
    )
    clinic = await world.clinic()
    patient = await world.patient(clinic, email="pat@patients.example")
    dns_server.zone.mx["patients.example"] = [
        (20, "mx2.patients.example"),
        (10, "mx1.patients.example"),
    ]
    dns_server.zone.a["mx1.patients.example"] = ["127.0.0.1"]
    dns_server.zone.a["mx2.patients.example"] = ["127.0.0.2"]
    async with svc.transaction() as s:
        row = await invite(s, svc, patient=patient, clinic=clinic)
    await deliver_all(svc)
    assert (await notification(svc, row.id)).state == "sent"
    assert sink.messages[0][1] == ["pat@patients.example"]


@pytest.mark.parametrize("domain_setup", ["nxdomain", "null-mx"])
async def test_a_domain_that_takes_no_mail_bounces(
    services, world, dns_server, with_config, domain_setup
):
    svc = with_config(
        services,
        delivery={"relay": "", "maildir": ""},
        dns={"nameservers": (dns_server.nameserver,)},
    )
    clinic = await world.clinic()
    patient = await world.patient(clinic, email="pat@nomail.example")
    if domain_setup == "nxdomain":
        dns_server.zone.nxdomain.add("nomail.example")
    else:
        dns_server.zone.mx["nomail.example"] = [(0, ".")]
    async with svc.transaction() as s:
        row = await invite(s, svc, patient=patient, clinic=clinic)
    await deliver_all(svc)
    assert (await notification(svc, row.id)).state == "bounced"


async def test_maildir_writes_an_eml_file_per_email(services, world, tmp_path):
    # make_config points [delivery] maildir at tmp_path/outbox, as config.toml does var/outbox.
    _clinic, _patient, nid = await _invited(services, world)
    await deliver_all(services)
    path = tmp_path / "outbox" / f"{nid}.eml"
    data = path.read_bytes()
    assert data.startswith(b"Return-Path: <bounce+")
    msg = parse(data)
    assert "/r/" in text_of(msg)
    assert (await notification(services, nid)).state == "sent"


async def test_events_within_the_window_coalesce_into_one_email(
    services, world, sink, relay_to, clock
):
    svc = relay_to(services, sink.port, coalesce_seconds=120)
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    ids = set()
    for thread in ("a" * 32, "a" * 32, "b" * 32):
        async with svc.transaction() as s:
            row = await notify.enqueue(
                s,
                svc.keyring,
                notice=Notice(kind=Kind.NEW_MESSAGE, thread_id=thread),
                clinic_id=clinic.id,
                recipient=patient.email,
                now=clock.now(),
                patient_id=patient.id,
                coalesce_seconds=svc.config.delivery.coalesce_seconds,
            )
            ids.add(row.id)
        clock.advance(seconds=10)
    assert len(ids) == 1
    await deliver_all(svc)
    assert sink.messages == []  # still gathering
    clock.advance(seconds=100)
    await deliver_all(svc)
    assert len(sink.messages) == 1
    msg = parse(sink.messages[0][2])
    assert msg["Subject"] == "You have 3 new secure messages"
    # Two threads: the link goes to the inbox, and there is no thread to reply into.
    assert msg["Reply-To"] is None
    # An event after the email went out starts a new one.
    async with svc.transaction() as s:
        later = await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.NEW_MESSAGE, thread_id="a" * 32),
            clinic_id=clinic.id,
            recipient=patient.email,
            now=clock.now(),
            patient_id=patient.id,
        )
    assert later.id not in ids


async def test_headers_of_a_thread_notification(services, world, sink, relay_to):
    svc = relay_to(services, sink.port)
    clinic = await world.clinic()
    patient = await world.patient(clinic, language="es")
    async with svc.transaction() as s:
        row = await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.NEW_MESSAGE, thread_id="c" * 32),
            clinic_id=clinic.id,
            recipient=patient.email,
            now=svc.clock.now(),
            language=patient.language,
            patient_id=patient.id,
            coalesce_seconds=0,
        )
    await deliver_all(svc)
    mail_from, rcpts, data = sink.messages[0]
    msg = parse(data)
    stored = await notification(svc, row.id)
    assert msg["Message-ID"] == stored.message_id
    assert msg["Message-ID"].endswith(f"@{clinic.sending_domain}>")
    assert msg["From"] == f"{clinic.name} <notifications@{clinic.sending_domain}>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Reply-To"].startswith("reply+") and msg["Reply-To"].endswith(
        f"@{clinic.reply_domain}"
    )
    assert mail_from.startswith("bounce+") and mail_from.endswith(f"@{clinic.reply_domain}")
    assert rcpts == [patient.email]
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == "Tiene un mensaje seguro nuevo"  # the patient's language


async def test_every_message_has_its_own_bounce_token(services, world, sink, relay_to):
    svc = relay_to(services, sink.port)
    clinic = await world.clinic()
    patients = [await world.patient(clinic) for _ in range(3)]
    async with svc.transaction() as s:
        for p in patients:
            await invite(s, svc, patient=p, clinic=clinic)
    await deliver_all(svc)
    senders = {m[0] for m in sink.messages}
    assert len(senders) == 3


async def test_metrics_count_outcomes(services, world, sink, relay_to):
    svc = relay_to(services, sink.port)
    await _invited(svc, world)
    await deliver_all(svc)
    text = svc.metrics.render().decode()
    assert 'carebridge_deliveries_total{outcome="sent"} 1.0' in text
    assert "carebridge_delivery_latency_seconds_count 1.0" in text
    assert "carebridge_dkim_sign_seconds_count 1.0" in text


async def test_the_part_delivers_on_its_own_when_woken(services, world, sink, relay_to):
    svc = relay_to(services, sink.port, poll_seconds=30)
    part = DeliveryPart(svc)
    await part.start()
    try:
        await _invited(svc, world)
        part.wake()
        async with __import__("asyncio").timeout(10):
            await sink.received.wait()
    finally:
        await part.stop()
    assert len(sink.messages) == 1


async def test_a_claim_that_would_run_out_during_the_send_is_not_sent(
    services, world, sink, relay_to
):
    # A lease shorter than one send's timeout: sending could overlap another node's retry.
    svc = relay_to(services, sink.port, lease_seconds=30, timeout_seconds=60)
    _clinic, _patient, nid = await _invited(svc, world)
    await deliver_all(svc)
    row = await notification(svc, nid)
    assert row.state == "deferred" and row.last_error == "claim nearly expired before sending"
    assert sink.messages == [] and sink.rcpt_attempts == 0


async def test_an_internationalised_recipient_is_dead_lettered_not_rewritten(
    services, world, sink, relay_to
):
    svc = relay_to(services, sink.port)
    clinic = await world.clinic()
    async with svc.transaction() as s:
        row = await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.PASSWORD_RESET),
            clinic_id=clinic.id,
            recipient="pät@bücher.example",
            now=svc.clock.now(),
        )
    await deliver_all(svc)
    stored = await notification(svc, row.id)
    assert (stored.state, stored.last_error) == ("failed", "cannot build message (ValueError)")
    assert sink.messages == [] and b"RCPT" not in bytes(sink.raw)


@pytest.mark.parametrize("allowed", [True, False])
async def test_staff_notice_about_a_thread_carries_a_staff_reply_to_only_if_allowed(
    services, world, sink, relay_to, allowed
):
    svc = relay_to(services, sink.port)
    clinic = await world.clinic()
    nurse = await world.staff(clinic)
    async with svc.transaction() as s:
        await s.execute(
            update(Clinic).where(Clinic.id == clinic.id).values(staff_email_replies=allowed)
        )
        await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.SLA_WARNING, thread_id="d" * 32),
            clinic_id=clinic.id,
            recipient=nurse.email,
            now=svc.clock.now(),
            staff_id=nurse.id,
        )
    await deliver_all(svc)
    msg = parse(sink.messages[0][2])
    async with svc.sessions() as s:
        staff_tokens = (
            await s.scalars(select(Token).where(Token.purpose == "reply_address"))
        ).all()
    if allowed:
        assert msg["Reply-To"].startswith("reply+")
        assert msg["Reply-To"].endswith(f"@{clinic.reply_domain}")
        assert [(t.subject_kind, t.subject_id, t.data) for t in staff_tokens] == [
            ("staff", nurse.id, {"thread_id": "d" * 32})
        ]
        assert "replying to this email" in text_of(msg)
    else:
        assert msg["Reply-To"] is None and staff_tokens == []
    assert f"/staff/threads/{'d' * 32}" in text_of(msg)


async def test_a_staff_digest_names_the_pool_and_links_to_its_queue(
    services, world, sink, relay_to
):
    svc = relay_to(services, sink.port)
    clinic = await world.clinic()
    nurse = await world.staff(clinic)
    async with svc.transaction() as s:
        pool = await s.scalar(
            select(Pool).where(Pool.clinic_id == clinic.id, Pool.slug == "refills")
        )
        await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.STAFF_DIGEST, count=2, urgent_count=1, pool_id=pool.id),
            clinic_id=clinic.id,
            recipient=nurse.email,
            now=svc.clock.now(),
            staff_id=nurse.id,
        )
    await deliver_all(svc)
    msg = parse(sink.messages[0][2])
    assert msg["Subject"] == "Urgent: 2 new messages in Refills"  # urgent work is said first
    assert f"http://127.0.0.1:8025/staff/pools/{pool.id}" in text_of(msg)
    assert "1 is marked urgent." in text_of(msg)
    assert msg["List-Unsubscribe"] is None and msg["Reply-To"] is None


async def _sent(svc) -> int:
    async with svc.sessions() as s:
        return int(
            await s.scalar(
                select(func.count()).select_from(Notification).where(Notification.state == "sent")
            )
            or 0
        )


@pytest.mark.parametrize("unconfirmed", [1, 4])
async def test_a_crash_could_find_at_most_max_unconfirmed_messages_taken_but_unrecorded(
    services, world, start_sink, relay_to, unconfirmed
):
    """From DATA on, the relay may take the message; until its answer is committed a crash
    would send it again. Sends take turns for that stretch: with max_unconfirmed = 1 each
    message reaches DATA only after every earlier accepted one is recorded 'sent'."""
    sink = await start_sink()
    svc = relay_to(services, sink.port, max_unconfirmed=unconfirmed, per_domain_concurrency=8)
    for _ in range(6):
        await _invited(svc, world)
    at_data: list[tuple[int, int]] = []  # (accepted before this one, recorded 'sent' then)
    inside = 0
    most_inside = 0

    async def on_data() -> None:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        at_data.append((len(sink.messages), await _sent(svc)))
        await asyncio.sleep(0.05)  # a relay that takes its time to answer
        inside -= 1

    sink.on_data = on_data
    part = DeliveryPart(svc)
    try:
        assert await part.run_once("w") == 6
    finally:
        await part.transport.close()
    assert await _sent(svc) == 6 and len(sink.messages) == 6
    if unconfirmed == 1:
        assert most_inside == 1
        assert all(accepted == recorded for accepted, recorded in at_data), at_data
    else:
        assert 1 < most_inside <= unconfirmed  # the knob lets sends overlap, up to its value

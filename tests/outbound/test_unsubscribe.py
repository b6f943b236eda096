"""A patient switches off one optional kind of email from the link in it, or in one click.

Mail scanners fetch links before people do: five cookieless GETs and HEADs must change
nothing and leave the link working for the person's POST.
"""

from __future__ import annotations

import re

import httpx
from sqlalchemy import select

from gateway.models import Patient, Token
from gateway.outbound import notify
from gateway.outbound.notify import Kind, Notice
from gateway.web.app import create_app

from .helpers import deliver_all, notification, parse, text_of


async def _new_message_email(services, world, sink, relay_to, **patient):
    clinic = await world.clinic()
    p = await world.patient(clinic, **patient)
    svc = relay_to(services, sink.port)
    async with svc.transaction() as s:
        await notify.enqueue(
            s,
            svc.keyring,
            notice=Notice(kind=Kind.NEW_MESSAGE, thread_id="t" * 32),
            clinic_id=clinic.id,
            recipient=p.email,
            now=svc.clock.now(),
            language=p.language,
            patient_id=p.id,
            coalesce_seconds=0,
        )
    await deliver_all(svc)
    return svc, p, clinic, parse(sink.messages[-1][2])


def _client(services) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(services))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_prefetching_never_consumes_and_the_post_still_works(services, world, sink, relay_to):
    svc, patient, _clinic, msg = await _new_message_email(services, world, sink, relay_to)
    header = msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.fullmatch(r"<(.+)>", header).group(1)
    path = httpx.URL(url).path
    assert path.startswith("/u/")
    async with _client(svc) as client:
        for i in range(5):
            r = await client.get(path) if i % 2 == 0 else await client.head(path)
            assert r.status_code == 200
            assert r.headers["cache-control"] == "no-store"
            assert not client.cookies
        async with svc.sessions() as s:
            p = await s.get(Patient, patient.id)
            assert p.notification_prefs.get("new_message") is None
            token = await s.scalar(select(Token).where(Token.purpose == "unsubscribe"))
            assert token.uses == 0 and token.consumed_at is None
        page = await client.get(path)
        assert "Stop these emails" in page.text
        done = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert "no longer get emails about new secure messages" in done.text
    async with svc.sessions() as s:
        p = await s.get(Patient, patient.id)
        assert p.notification_prefs["new_message"] is False


async def test_unsubscribed_kind_is_cancelled_but_transactional_mail_is_sent(
    services, world, sink, relay_to
):
    svc, patient, clinic, msg = await _new_message_email(services, world, sink, relay_to)
    path = httpx.URL(msg["List-Unsubscribe"].strip("<>")).path
    async with _client(svc) as client:
        # RFC 8058 one-click: a bare POST from the mail provider, no cookies, no page.
        r = await client.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
    ids = []
    async with svc.transaction() as s:
        for kind in (Kind.NEW_MESSAGE, Kind.PASSWORD_RESET):
            row = await notify.enqueue(
                s,
                svc.keyring,
                notice=Notice(kind=kind),
                clinic_id=clinic.id,
                recipient=patient.email,
                now=svc.clock.now(),
                patient_id=patient.id,
                coalesce_seconds=0,
            )
            ids.append(row.id)
    sent_before = len(sink.messages)
    await deliver_all(svc)
    assert (await notification(svc, ids[0])).state == "cancelled"
    assert (await notification(svc, ids[1])).state == "sent"
    assert len(sink.messages) == sent_before + 1
    assert "List-Unsubscribe" not in parse(sink.messages[-1][2])


async def test_unknown_or_wrong_purpose_token_is_a_plain_404(services, world, sink, relay_to):
    svc, _patient, _clinic, msg = await _new_message_email(services, world, sink, relay_to)
    view_link = re.search(r"http://\S+/t/([A-Za-z0-9_-]+)", text_of(msg))
    async with _client(svc) as client:
        for path in ("/u/" + "A" * 32, "/u/short", "/u/" + view_link.group(1)):
            r = await client.get(path)
            assert r.status_code == 404
            assert "does not work" in r.text
            assert (await client.post(path)).status_code == 404

"""The integration REST API over real HTTP (httpx against the ASGI app): bearer keys, org
scoping, Idempotency-Key replays, and RFC 9457 problem documents that never echo PHI."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from gateway.admin import apikeys
from gateway.models import Appointment, Message, Notification, Thread
from gateway.outbound.notify import Kind
from gateway.services import Services
from gateway.web.app import create_app
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.world import FakeClock, World


async def _key(services: Services, role: str = "integration", org: str | None = None) -> str:
    async with services.transaction() as s:
        created = await apikeys.create(
            s, name="lab", role=role, org_slug=org, now=services.clock.now(), actor="test"
        )
        return created.value


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    key = await _key(services)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/api/v1",
        headers={"Authorization": f"Bearer {key}"},
    ) as c:
        yield c


def _is_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    doc = r.json()
    assert doc["status"] == status and doc["type"].startswith("https://") and doc["title"]
    return dict(doc)


async def test_openapi_document_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/patients/{patient_id}/results" in paths and "/queues" in paths


async def test_missing_or_revoked_key_gets_401_problem(
    services: Services, client: httpx.AsyncClient
) -> None:
    r = await client.get("/queues", headers={"Authorization": ""})
    _is_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.get("/queues", headers={"Authorization": "Bearer cbk_nope_nope"})
    _is_problem(r, 401)
    key = client.headers["authorization"].split()[1]
    async with services.transaction() as s:
        await apikeys.revoke(s, key.split("_")[1], now=services.clock.now(), actor="test")
    _is_problem(await client.get("/queues"), 401)


async def test_validation_errors_never_echo_phi(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/patients",
        json={
            "clinic": "x",
            "given_name": CANARY_GIVEN,
            "family_name": CANARY_FAMILY * 20,
            "date_of_birth": f"{CANARY_TEXT}",
            "email": CANARY_EMAIL,
        },
    )
    doc = _is_problem(r, 422)
    assert doc["errors"]
    for canary in (CANARY_GIVEN, CANARY_FAMILY, CANARY_TEXT, CANARY_EMAIL):
        assert canary not in r.text
    _is_problem(await client.post("/patients", content=b"{not json"), 422)
    _is_problem(await client.get("/nowhere"), 404)
    _is_problem(await client.put("/queues"), 405)


async def test_provider_message_result_and_state(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    r = await client.post(
        f"/patients/{patient.id}/messages", json={"subject": CANARY_TEXT, "body": CANARY_TEXT}
    )
    assert r.status_code == 201, r.text
    assert CANARY_TEXT not in r.text
    thread_id = r.json()["thread_id"]
    r = await client.post(
        f"/patients/{patient.id}/messages", json={"thread_id": thread_id, "body": "more"}
    )
    assert r.status_code == 201 and r.json()["thread_id"] == thread_id
    async with services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 2
        t = await s.get(Thread, thread_id)
        assert t is not None and t.patient_unread and t.sla_due_at is None

    held = await client.post(
        f"/patients/{patient.id}/results",
        json={"title": "Lipids", "data": {"ldl": 3.1}, "release": False},
    )
    assert held.status_code == 201 and held.json()["released"] is False
    now = await client.post(f"/patients/{patient.id}/results", json={"title": "CBC"})
    assert now.status_code == 201 and now.json()["released"] is True

    r = await client.get(f"/patients/{patient.id}/notifications")
    assert r.status_code == 200
    doc = r.json()
    assert doc["deliverability"] == "ok"
    kinds = [n["kind"] for n in doc["notifications"]]
    assert str(Kind.NEW_RESULT) in kinds and str(Kind.NEW_MESSAGE) in kinds
    assert CANARY_EMAIL not in r.text and patient.email not in r.text

    _is_problem(await client.get("/patients/unknown/notifications"), 404)
    _is_problem(
        await client.post(f"/patients/{patient.id}/messages", json={"thread_id": "x", "body": "b"}),
        404,
    )
    _is_problem(await client.post(f"/patients/{patient.id}/messages", json={"body": "b"}), 422)


async def test_appointments_schedule_and_cancel(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    when = (services.clock.now() + timedelta(days=3)).isoformat()
    r = await client.post(
        "/appointments", json={"patient_id": patient.id, "starts_at": when, "external_id": "A1"}
    )
    assert r.status_code == 201, r.text
    appt_id = r.json()["appointment_id"]
    again = await client.post(
        "/appointments", json={"patient_id": patient.id, "starts_at": when, "external_id": "A1"}
    )
    _is_problem(again, 422)
    past = (services.clock.now() - timedelta(days=1)).isoformat()
    _is_problem(
        await client.post("/appointments", json={"patient_id": patient.id, "starts_at": past}), 422
    )
    naive = await client.post(
        "/appointments", json={"patient_id": patient.id, "starts_at": "2030-01-01T10:00:00"}
    )
    _is_problem(naive, 422)
    r = await client.post(f"/appointments/{appt_id}/cancel")
    assert r.status_code == 200 and r.json()["cancelled"] is True
    async with services.sessions() as s:
        appt = await s.get(Appointment, appt_id)
        assert appt is not None and appt.cancelled_at is not None
    _is_problem(await client.post("/appointments/nope/cancel"), 404)


async def test_idempotency_key_replays_and_refuses_changed_requests(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    body = {"subject": "s", "body": "hello"}
    headers = {"Idempotency-Key": "msg-0001"}
    first = await client.post(f"/patients/{patient.id}/messages", json=body, headers=headers)
    second = await client.post(f"/patients/{patient.id}/messages", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("idempotent-replayed") == "true"
    async with services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 1
    changed = await client.post(
        f"/patients/{patient.id}/messages", json={**body, "body": "other"}, headers=headers
    )
    _is_problem(changed, 422)
    # Another API key may use the same key string for its own request.
    other = await _key(services)
    r = await client.post(
        f"/patients/{patient.id}/messages",
        json=body,
        headers={**headers, "Authorization": f"Bearer {other}"},
    )
    assert r.status_code == 201 and r.json()["message_id"] != first.json()["message_id"]
    # Errors (4xx) are replayed too; a bad key header is refused.
    bad = await client.post("/appointments/nope/cancel", headers={"Idempotency-Key": "c-1"})
    again = await client.post("/appointments/nope/cancel", headers={"Idempotency-Key": "c-1"})
    assert bad.status_code == again.status_code == 404
    _is_problem(
        await client.post("/appointments/nope/cancel", headers={"Idempotency-Key": "a b"}), 400
    )


async def test_org_scoped_key_sees_only_its_org(services: Services, world: World) -> None:
    mine = await world.clinic(org="org-a")
    theirs = await world.clinic(org="org-b")
    stranger = await world.patient(theirs)
    key = await _key(services, org="org-a")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t/api/v1", headers={"Authorization": f"Bearer {key}"}
    ) as c:
        _is_problem(await c.get(f"/patients/{stranger.id}/notifications"), 404)
        r = await c.get("/queues")
        assert r.status_code == 200
        assert {q["clinic"] for q in r.json()} == {mine.slug}
        _is_problem(await c.get("/api-keys"), 403)


async def test_queues_count_open_work(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient = await world.patient(clinic)
    for urgent in (True, False):
        await world.thread(clinic, patient, request_type="medication_renewal", urgent=urgent)
    r = await client.get("/queues")
    refills = next(q for q in r.json() if q["clinic"] == clinic.slug and q["pool"] == "Refills")
    assert refills["open"] == 2 and refills["urgent"] == 1 and refills["unassigned"] == 2
    assert refills["next_due_at"] is not None
    async with services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Notification)) >= 2


async def test_enrol_invites_and_is_idempotent(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    body = {
        "clinic": clinic.slug,
        "given_name": CANARY_GIVEN,
        "family_name": CANARY_FAMILY,
        "date_of_birth": "1980-04-23",
        "email": CANARY_EMAIL,
    }
    headers = {"Idempotency-Key": "enrol-1"}
    r = await client.post("/patients", json=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["created"] is True
    for canary in (CANARY_GIVEN, CANARY_FAMILY, CANARY_EMAIL):
        assert canary not in r.text
    again = await client.post("/patients", json=body, headers=headers)
    assert again.json() == r.json()
    async with services.sessions() as s:
        invites = await s.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.kind == str(Kind.REGISTRATION_INVITATION))
        )
        assert invites == 1
    _is_problem(await client.post("/patients", json={**body, "clinic": "nope"}), 404)
    bad = await client.post("/patients", json={**body, "email": "not-an-address"})
    _is_problem(bad, 422)


async def test_idempotency_in_progress_and_expiry(
    services: Services, world: World, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    from gateway.models import ApiKey, IdempotencyRecord

    clinic = await world.clinic()
    patient = await world.patient(clinic)
    async with services.transaction() as s:
        key = await s.scalar(select(ApiKey))
        assert key is not None
        # As if the same request with this key were still running on another node.
        raw = json.dumps({"subject": "s", "body": "b"}).encode()
        path = f"/api/v1/patients/{patient.id}/messages"
        digest = hashlib.sha256(b"POST\n" + path.encode() + b"\n" + raw).hexdigest()
        s.add(
            IdempotencyRecord(
                api_key_id=key.id,
                key="busy",
                request_hash=digest,
                status_code=0,
                response={},
                created_at=clock.now(),
                expires_at=clock.now() + timedelta(hours=24),
            )
        )
    headers = {"Idempotency-Key": "busy", "Content-Type": "application/json"}
    busy = await client.post(f"/patients/{patient.id}/messages", content=raw, headers=headers)
    _is_problem(busy, 409)
    body = {"subject": "s", "body": "b"}
    first = await client.post(
        f"/patients/{patient.id}/messages", json=body, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 201
    clock.advance(hours=25)
    later = await client.post(
        f"/patients/{patient.id}/messages", json=body, headers={"Idempotency-Key": "k1"}
    )
    assert later.status_code == 201 and later.json() != first.json()
    assert "idempotent-replayed" not in later.headers

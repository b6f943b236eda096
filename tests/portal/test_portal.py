"""The signed-in portal: typed requests, urgent screen, staff replies, unread and audited
reads, results with a release hold, the library, preferences, moving clinic."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from gateway.careteam import threads
from gateway.models import AuditEvent, Message, Notification, Patient, Result, Staff, Thread
from gateway.portal import library, patients, results
from gateway.services import Services
from tests.portal.helpers import active_patient, csrf_of, patient_sign_in
from tests.support.canaries import CANARY_TEXT
from tests.support.world import World


async def compose(client: httpx.AsyncClient, kind: str, data: dict[str, Any]) -> httpx.Response:
    page = await client.get(f"/portal/compose/{kind}")
    assert page.status_code == 200
    assert "within one business day" in page.text and "911" in page.text
    return await client.post(
        f"/portal/compose/{kind}", data={**data, "csrf_token": csrf_of(page.text)}
    )


async def only_thread(services: Services) -> Thread:
    async with services.sessions() as s:
        return (await s.scalars(select(Thread))).one()


async def test_appointment_request_reply_unread_and_audited_read(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    nurse = await world.staff(clinic)
    await patient_sign_in(client, "pat@example.org")
    r = await compose(
        client,
        "appointment",
        {"reason": "Knee hurts when climbing stairs", "days": ["mon", "thu"], "times": ["morning"]},
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/threads/")
    thread = await only_thread(services)
    assert thread.request_type == "appointment" and not thread.urgent
    assert thread.details == {
        "reason": "Knee hurts when climbing stairs",
        "preferred_days": ["mon", "thu"],
        "preferred_times": ["morning"],
    }
    assert thread.patient_id == patient.id and thread.clinic_id == clinic.id
    async with services.transaction() as s:
        t = await s.get(Thread, thread.id)
        member = await s.get(Staff, nurse.id)
        assert t is not None and member is not None
        await threads.post_staff_message(
            s, services, thread=t, staff=member, body="Come Monday 9am"
        )
        await threads.post_staff_message(
            s, services, thread=t, staff=member, body="note", internal=True
        )
    inbox = await client.get("/portal")
    assert "New reply" in inbox.text and 'class="unread"' in inbox.text
    page = await client.get(f"/portal/threads/{thread.id}")
    assert (
        "Come Monday 9am" in page.text and "note" not in page.text.split("<ol")[1].split("</ol>")[0]
    )
    assert "Come Monday" not in page.text.split("<title>")[1].split("</title>")[0]
    inbox = await client.get("/portal")
    assert "New reply" not in inbox.text
    async with services.sessions() as s:
        reads = (
            await s.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "thread.read", AuditEvent.object_id == thread.id
                )
            )
        ).all()
        staff_msgs = (await s.scalars(select(Message).where(Message.author_kind == "staff"))).all()
    assert len(reads) == 1 and reads[0].actor == f"patient:{patient.id}"
    assert all(m.read_at is not None for m in staff_msgs if not m.internal)


async def test_medication_renewal_from_list_or_free_text(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    async with services.transaction() as s:
        row = await s.get(Patient, patient.id)
        assert row is not None
        row.clinical = {"medications": [{"name": "Lisinopril 10 mg"}, "Metformin 500 mg"]}
    await patient_sign_in(client, "pat@example.org")
    page = await client.get("/portal/compose/medication_renewal")
    assert "Lisinopril 10 mg" in page.text and "Metformin 500 mg" in page.text
    r = await compose(
        client, "medication_renewal", {"medication": "Not On List", "pharmacy": "Main St"}
    )
    assert r.status_code == 400
    r = await compose(client, "medication_renewal", {"medication": "Metformin 500 mg"})
    assert r.status_code == 400 and "which pharmacy" in r.text
    r = await compose(
        client,
        "medication_renewal",
        {"medication": "Metformin 500 mg", "pharmacy": "Main St Pharmacy"},
    )
    assert r.status_code == 303
    r = await compose(
        client,
        "medication_renewal",
        {"medication": "__other__", "medication_other": "Vitamin D", "pharmacy": "X"},
    )
    assert r.status_code == 303
    async with services.sessions() as s:
        found = (await s.scalars(select(Thread).order_by(Thread.created_at, Thread.id))).all()
    details = sorted((t.details or {}).get("medication") for t in found)
    assert details == ["Metformin 500 mg", "Vitamin D"]
    assert {(t.details or {}).get("from_list") for t in found} == {True, False}


async def test_urgent_screen_warns_then_sends_flagged(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    async with services.transaction() as s:
        c = await s.get(type(clinic), clinic.id)
        assert c is not None
        c.urgent_terms = ["black stools"]
        c.phone = "555-0100"
    await active_patient(services, clinic)
    await patient_sign_in(client, "pat@example.org")
    r = await compose(
        client,
        "question",
        {"subject": "Since last night", "message": "I have CHEST  pain and sweating"},
    )
    assert r.status_code == 200 and "call 911" in r.text.lower() and "555-0100" in r.text
    assert (await client.get("/portal")).text.count("/portal/threads/") == 0  # nothing sent yet
    confirm_csrf = csrf_of(r.text)
    assert 'name="message" value="I have CHEST  pain and sweating"' in r.text
    r2 = await client.post(
        "/portal/compose/question",
        data={
            "csrf_token": confirm_csrf,
            "subject": "Since last night",
            "message": "I have CHEST  pain and sweating",
            "confirm_urgent": "yes",
        },
    )
    assert r2.status_code == 303
    thread = await only_thread(services)
    assert thread.urgent
    # The clinic's own term, accents/case ignored; a word inside another word is no hit.
    r = await compose(
        client, "question", {"subject": "Q", "message": "I noticed Black Stools today"}
    )
    assert "call 911" in r.text.lower()
    r = await compose(
        client, "question", {"subject": "Q", "message": "I was painting the chest of drawers"}
    )
    assert r.status_code == 303


async def test_results_appear_only_when_released_and_sensitive_ones_wait(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    async with services.transaction() as s:
        await results.add_result(
            s,
            services,
            patient=patient,
            clinic=clinic,
            kind="lab",
            title="Lipid panel",
            data={"items": [{"name": "LDL", "value": "99", "unit": "mg/dL"}]},
            release=True,
            actor="integration:x",
        )
        held = await results.add_result(
            s,
            services,
            patient=patient,
            clinic=clinic,
            kind="lab",
            title=CANARY_TEXT,
            data={},
            sensitive=True,
            release=True,
            actor="integration:x",
        )
        await results.add_result(
            s,
            services,
            patient=patient,
            clinic=clinic,
            kind="test",
            title="Unreleased ECG",
            data={},
            actor="staff:y",
        )
    await patient_sign_in(client, "pat@example.org")
    page = await client.get("/portal/results")
    assert "Lipid panel" in page.text
    assert CANARY_TEXT not in page.text and "Unreleased ECG" not in page.text
    assert (await client.get(f"/portal/results/{held.id}")).status_code == 404
    async with services.transaction() as s:
        row = await s.get(Result, held.id)
        assert row is not None
        await results.release_result(s, services, row, actor="staff:clinician")
    page = await client.get("/portal/results")
    assert CANARY_TEXT in page.text
    r = await client.get(f"/portal/results/{held.id}")
    assert r.status_code == 200 and CANARY_TEXT not in r.text.split("</title>")[0]
    async with services.sessions() as s:
        kinds = (
            await s.scalars(select(Notification.kind).where(Notification.patient_id == patient.id))
        ).all()
        reads = (
            await s.scalars(select(AuditEvent).where(AuditEvent.action == "result.read"))
        ).all()
    assert kinds.count("new_result") >= 1 and len(reads) == 1


async def test_library_search_topics_assignment_and_spanish(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    await patient_sign_in(client, "pat@example.org")
    page = await client.get("/portal/library", params={"q": "insulin"})
    assert (
        "type 2 diabetes" in page.text
        and "blood pressure" not in page.text.lower().split("<h2>articles")[-1]
    )
    page = await client.get("/portal/library", params={"topic": "vaccines"})
    assert "Vaccines for adults" in page.text and "healthy plate" not in page.text.lower()
    async with services.transaction() as s:
        await library.assign(
            s, services, patient_id=patient.id, slug="healthy-plate", actor="staff:n"
        )
    inbox = await client.get("/portal")
    assert "The healthy plate" in inbox.text
    await client.get("/portal/library/healthy-plate")
    assert "The healthy plate" not in (await client.get("/portal")).text
    await client.get("/lang/es", params={"next": "/portal/library"})
    page = await client.get("/portal/library", params={"q": "insulina"})
    assert 'lang="es"' in page.text and "Vivir bien con diabetes tipo 2" in page.text


async def test_preferences_switch_off_optional_emails_and_language(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    patient: Any = await active_patient(services, clinic)
    nurse = await world.staff(clinic)
    await patient_sign_in(client, "pat@example.org")
    page = await client.get("/portal/preferences")
    r = await client.post(
        "/portal/preferences",
        data={"csrf_token": csrf_of(page.text), "kinds": ["new_result"], "language": "es"},
    )
    assert r.status_code == 303
    async with services.sessions() as s:
        row = await s.get(Patient, patient.id)
    assert row is not None and row.language == "es"
    assert (
        row.notification_prefs["new_message"] is False
        and row.notification_prefs["new_result"] is True
    )
    assert 'lang="es"' in (await client.get("/portal")).text
    page = await client.get("/portal/compose/question")
    assert "Los mensajes se responden en un día hábil." in page.text
    await client.get("/lang/en", params={"next": "/portal"})
    await compose(client, "question", {"subject": "Hola", "message": "Una pregunta"})
    thread = await only_thread(services)
    async with services.transaction() as s:
        t = await s.get(Thread, thread.id)
        member = await s.get(Staff, nurse.id)
        assert t and member
        await threads.post_staff_message(s, services, thread=t, staff=member, body="Respuesta")
        kinds = (
            await s.scalars(select(Notification.kind).where(Notification.patient_id == patient.id))
        ).all()
    assert "new_message" not in kinds


async def test_moving_clinic_keeps_history_and_new_threads_go_to_the_new_clinic(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    old = await world.clinic(name="Old Town Clinic")
    new = await world.clinic(name="New Town Clinic")
    patient: Any = await active_patient(services, old)
    await patient_sign_in(client, "pat@example.org")
    await compose(client, "question", {"subject": "First", "message": "Before moving"})
    async with services.transaction() as s:
        p = await s.get(Patient, patient.id)
        assert p is not None
        await patients.move_to_clinic(s, p, new, source="desk", actor="staff:x")
    await compose(client, "question", {"subject": "Second", "message": "After moving"})
    async with services.sessions() as s:
        found = {t.subject: t.clinic_id for t in (await s.scalars(select(Thread))).all()}
    assert found == {"First": old.id, "Second": new.id}
    inbox = await client.get("/portal")
    assert "First" in inbox.text and "Second" in inbox.text and "Old Town Clinic" in inbox.text


async def test_patients_cannot_open_each_others_threads(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await active_patient(services, clinic, email="one@example.org")
    await active_patient(services, clinic, email="two@example.org")
    await patient_sign_in(client, "one@example.org")
    await compose(client, "question", {"subject": CANARY_TEXT, "message": CANARY_TEXT})
    thread = await only_thread(services)
    client.cookies.clear()
    await patient_sign_in(client, "two@example.org")
    r = await client.get(f"/portal/threads/{thread.id}")
    assert r.status_code == 404 and CANARY_TEXT not in r.text
    page = await client.get("/portal")
    r = await client.post(
        f"/portal/threads/{thread.id}/reply",
        data={"csrf_token": csrf_of(page.text), "message": "hi"},
    )
    assert r.status_code == 404


async def test_urgent_screen_on_a_reply_flags_the_thread(
    services: Services, world: World, client: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await active_patient(services, clinic)
    await patient_sign_in(client, "pat@example.org")
    await compose(client, "question", {"subject": "Rash", "message": "A small rash"})
    thread = await only_thread(services)
    page = await client.get(f"/portal/threads/{thread.id}")
    assert "within one business day" in page.text
    data = {"csrf_token": csrf_of(page.text), "message": "Now I have trouble breathing"}
    r = await client.post(f"/portal/threads/{thread.id}/reply", data=data)
    assert r.status_code == 200 and "call 911" in r.text.lower()
    assert not (await only_thread(services)).urgent
    r = await client.post(
        f"/portal/threads/{thread.id}/reply", data={**data, "confirm_urgent": "yes"}
    )
    assert r.status_code == 303
    assert (await only_thread(services)).urgent
    async with services.sessions() as s:
        bodies = (await s.scalars(select(Message.body).where(Message.thread_id == thread.id))).all()
    assert "Now I have trouble breathing" in bodies

"""An operator watches the outbound queue: the dashboard, /metrics and ``queue status`` agree.

A queued, a deferred and a failed notification (plus sent and bounced history) are put in the
store; the operator signs in over real HTTP and reads the dashboard; Prometheus scrapes
/metrics; the CLI prints ``queue status --json``. The counts must match everywhere, and no
PHI may appear in a page, a metric label or a deferral reason.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from gateway.admin import domains
from gateway.admin.clinics import get_clinic
from gateway.models import AuditEvent, Clinic, Patient, Thread
from gateway.outbound import notify
from gateway.outbound.notify import Kind, Notice
from gateway.services import Services
from gateway.templating import build_environment, templates_dir
from gateway.web.app import create_app
from tests.admin.helpers import Cli, post_page, sign_in
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT
from tests.support.world import FakeClock, World

CANARIES = (CANARY_EMAIL, CANARY_GIVEN, CANARY_FAMILY, CANARY_TEXT, "canary-zq7")


async def _notification(
    services: Services, clinic: Clinic, patient: Patient, state: str, **fields: Any
) -> str:
    kind = fields.pop("kind", None)
    async with services.transaction() as s:
        row = await notify.enqueue(
            s,
            services.keyring,
            notice=Notice(Kind.PASSWORD_RESET),  # never coalesced: one row each
            clinic_id=clinic.id,
            recipient=patient.email,
            now=services.clock.now() - timedelta(minutes=30),
            patient_id=patient.id,
        )
        row.state = state
        if kind:
            row.kind = kind
        for k, v in fields.items():
            setattr(row, k, v)
        return row.id


async def _story(services: Services, world: World, clock: FakeClock) -> dict[str, Any]:
    north = await world.clinic("north")
    south = await world.clinic("south")
    p = await world.patient(
        north, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email=CANARY_EMAIL
    )
    q = await world.patient(south)
    now = clock.now()
    await _notification(services, north, p, "queued")
    await _notification(
        services, north, p, "deferred", last_error="451 4.7.1 greylisted, try again later"
    )
    # A relay's reply can quote the address; the dashboard must not show it.
    await _notification(
        services, north, p, "failed", last_error=f"550 5.1.1 <{CANARY_EMAIL}>: no such user"
    )
    for minutes in (1, 2, 3):
        await _notification(
            services, south, q, "sent", sent_at=now - timedelta(minutes=30 - minutes)
        )
    await _notification(services, south, q, "bounced")
    await _notification(services, north, p, "sent", kind=str(Kind.REGISTRATION_INVITATION),
                        sent_at=now)  # fmt: skip
    async with services.transaction() as s:
        await s.execute(
            update(Patient)
            .where(Patient.id == q.id)
            .values(deliverability="hard", email_verified_at=now, terms_agreed_at=now,
                    status="active")
        )  # fmt: skip
        # One open thread past its deadline, one answered in time; the subject is PHI.
        for breached in (True, False):
            s.add(
                Thread(clinic_id=north.id, patient_id=p.id, subject=CANARY_TEXT,
                       sla_due_at=now - timedelta(hours=2),
                       sla_breached_at=now - timedelta(hours=1) if breached else None)
            )  # fmt: skip
    await world.staff(None, role="operator", email="ops@carebridge.example")
    await world.staff(south, role="clinic_admin", email="admin@south.example")
    return {"north": north, "south": south, "p": p, "q": q}


def _cell(html: str, attr: str) -> int:
    import re

    m = re.search(rf"<td {attr}>(\d+)</td>", html)
    assert m, attr
    return int(m.group(1))


async def test_queue_counts_agree_on_dashboard_metrics_and_cli(
    services: Services, world: World, clock: FakeClock, web, cli: Cli
) -> None:
    story = await _story(services, world, clock)
    ops = web()
    await sign_in(ops, "ops@carebridge.example")
    page = await ops.get("/admin")
    assert page.status_code == 200, page.text
    html = page.text
    for state, n in {"queued": 1, "deferred": 1, "failed": 1, "sent": 4, "bounced": 1}.items():
        assert _cell(html, f'data-total="{state}"') == n, state
    assert _cell(html, 'data-clinic="north" data-state="deferred"') == 1
    assert _cell(html, 'data-clinic="south" data-state="queued"') == 0
    assert "greylisted" in html and "&lt;address&gt;" in html
    assert 'id="oldest-age">30.0 min<' in html
    assert "<svg" in html and "style=" not in html and "<script" not in html
    assert story["q"].id in html  # deliverability problem, by id
    funnel = {k: _cell(html, f'data-step="{k}"') for k in
              ("enrolled", "invited", "confirmed", "terms_agreed", "active")}  # fmt: skip
    assert funnel == {"enrolled": 2, "invited": 1, "confirmed": 1, "terms_agreed": 1, "active": 1}
    assert 'id="breach-count">1<' in html
    for canary in CANARIES:
        assert canary.lower() not in html.lower()

    scrape = await web().get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    by_state = {
        s.labels["state"]: s.value for s in families["carebridge_outbound_queue_depth"].samples
    }
    assert (by_state["queued"], by_state["deferred"], by_state["failed"]) == (1, 1, 1)
    by_clinic = {
        (s.labels["clinic"], s.labels["state"]): s.value
        for s in families["carebridge_outbound_queue_depth_by_clinic"].samples
    }
    assert by_clinic[("north", "deferred")] == 1 and by_clinic[("south", "queued")] == 0
    assert families["carebridge_outbound_oldest_queued_seconds"].samples[0].value == 1800
    assert families["carebridge_patients_undeliverable"].samples[0].value == 1
    assert families["carebridge_sla_breached_open_threads"].samples[0].value == 1
    labels = {v for f in families.values() for s in f.samples for v in s.labels.values()}
    allowed = {"north", "south", "pending", "active", "retiring", "retired"}
    from gateway.models.outbound import NOTIFICATION_STATES

    assert labels <= allowed | set(NOTIFICATION_STATES) | {"+Inf"} | {
        str(b) for f in families.values() for s in f.samples for b in [s.labels.get("le")] if b
    }
    for canary in CANARIES:
        assert canary.lower() not in scrape.text.lower()

    status = cli("queue", "status", "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert (counts["queued"], counts["deferred"], counts["failed"]) == (1, 1, 1)


async def test_clinic_admin_sees_only_their_clinic(
    services: Services, world: World, clock: FakeClock, web
) -> None:
    story = await _story(services, world, clock)
    admin = web()
    await sign_in(admin, "admin@south.example")
    audit_page = (await admin.get("/admin/audit")).text
    assert story["south"].id in audit_page and story["north"].id not in audit_page
    assert "auth.sign_in" in audit_page  # what their own staff did
    html = (await admin.get("/admin?clinic=north")).text  # the URL cannot widen the scope
    assert 'data-clinic="north"' not in html
    assert _cell(html, 'data-total="sent"') == 3  # north's invitation is not theirs
    assert _cell(html, 'data-total="deferred"') == 0
    assert _cell(html, 'data-step="enrolled"') == 1


async def test_only_admin_roles_get_in(services: Services, world: World, web) -> None:
    clinic = await world.clinic("east")
    await world.staff(clinic, role="nurse", email="nurse@east.example")
    anonymous = await web().get("/admin")
    assert anonymous.status_code == 303 and "/staff/login" in anonymous.headers["location"]
    nurse = web()
    await sign_in(nurse, "nurse@east.example")
    assert (await nurse.get("/admin")).status_code == 403
    assert (await nurse.get("/admin/audit")).status_code == 403


async def test_audit_log_filters_and_rejects_bad_dates(
    services: Services, world: World, clock: FakeClock, web
) -> None:
    await _story(services, world, clock)
    ops = web()
    await sign_in(ops, "ops@carebridge.example")
    html = (await ops.get("/admin/audit", params={"action": "clinic."})).text
    assert html.count("clinic.create") == 2 and "patient.enrol" not in html
    bad = await ops.get("/admin/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text


async def test_domain_wizard_on_the_web_is_audited(
    services: Services, world: World, web, dns
) -> None:
    zone, _ = dns
    clinic = await world.clinic("west")
    await world.staff(clinic, role="clinic_admin", email="admin@west.example")
    admin = web()
    await sign_in(admin, "admin@west.example")
    r = await post_page(admin, "/admin/domains", "/admin/domains",
                        {"clinic": "west", "sending_domain": "west.example",
                         "reply_domain": "not a domain"})  # fmt: skip
    assert r.status_code == 400 and "reply domain" in r.text
    r = await post_page(admin, "/admin/domains", "/admin/domains",
                        {"clinic": "west", "sending_domain": "west.example",
                         "reply_domain": "reply.west.example"})  # fmt: skip
    assert r.status_code == 200 and "_dmarc.west.example" in r.text
    assert r.text.count("._domainkey.west.example") == 2
    no_csrf = await admin.post("/admin/domains/check", data={"clinic": "west"})
    assert no_csrf.status_code == 403

    checked = await post_page(admin, "/admin/domains", "/admin/domains/check", {"clinic": "west"})
    assert 'data-record="_dmarc.west.example" data-status="missing"' in checked.text
    async with services.sessions() as s:
        c = await get_clinic(s, "west")
        zone.publish(
            [r.to_json() for r in domains.records(services.config, c,
                                                  await domains.clinic_keys(s, c))]
        )  # fmt: skip
    checked = await post_page(admin, "/admin/domains", "/admin/domains/check", {"clinic": "west"})
    assert "All records are published correctly." in checked.text
    rotated = await post_page(admin, "/admin/domains", "/admin/domains/rotate", {"clinic": "west"})
    assert rotated.status_code == 200 and "(pending)" in rotated.text

    async with services.sessions() as s:
        events = list(await s.execute(select(AuditEvent.action, AuditEvent.actor).where(
            AuditEvent.object_id == clinic.id,
            AuditEvent.action.startswith("domain."))))  # fmt: skip
    assert {a for a, _ in events} == {"domain.add", "domain.check", "domain.dkim_rotate"}
    assert all(actor.startswith("staff:") for _, actor in events)


async def test_readiness_needs_database_keys_and_smtp(services: Services, with_config, web) -> None:
    client = web()
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["smtp"] is False
    services.ready["smtp"] = True
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {
        "keys": True,
        "templates": True,
        "database": True,
        "smtp": True,
    }
    services.ready["smtp"] = False  # the intake stopped: the node leaves the load balancer
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/healthz")).status_code == 200


async def _readyz(app: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get("/readyz")


async def test_not_ready_without_templates(services: Services, tmp_path: Path) -> None:
    """A node installed without its templates (every page and email would fail) is unready."""
    services.ready["smtp"] = True
    app = create_app(services)
    assert (await _readyz(app)).status_code == 200
    app.state.templates = build_environment(tmp_path / "empty")
    r = await _readyz(app)
    assert r.status_code == 503 and r.json()["ready"] is False
    assert r.json()["checks"] == {"keys": True, "templates": False, "database": True, "smtp": True}


async def test_templates_removed_after_a_good_probe_make_the_node_unready(
    services: Services, tmp_path: Path
) -> None:
    """The first probe compiles and caches the templates; a later probe still notices them
    gone (a package upgraded or removed under a running node)."""
    services.ready["smtp"] = True
    copy = tmp_path / "templates"
    shutil.copytree(templates_dir(), copy)
    app = create_app(services)
    app.state.templates = build_environment(copy)
    for _ in range(3):
        assert (await _readyz(app)).status_code == 200
    (copy / "email" / "base.html.j2").unlink()
    r = await _readyz(app)
    assert r.status_code == 503 and r.json()["checks"]["templates"] is False
    # Broken, not missing: a template that no longer compiles fails the check too.
    shutil.copy(templates_dir() / "email" / "base.html.j2", copy / "email" / "base.html.j2")
    assert (await _readyz(app)).status_code == 200
    (copy / "web" / "base.html.j2").write_text("{% block unclosed %}")
    r = await _readyz(app)
    assert r.status_code == 503 and r.json()["checks"]["templates"] is False


async def test_daily_series_counts_latency_and_bounce_rate(
    services: Services, world: World, clock: FakeClock
) -> None:
    from gateway.admin import dashboard

    story = await _story(services, world, clock)
    async with services.sessions() as s:
        days = await dashboard.daily(s, dashboard.Scope(), clock.now())
        south = await dashboard.daily(s, dashboard.Scope(story["south"].id), clock.now())
    assert len(days) == 14 and days[-1].day.date() == clock.now().date()
    today = days[-1]
    assert (today.sent, today.bounced, today.failed) == (4, 1, 1)
    assert today.bounce_rate == 0.2
    # Latencies 60, 120, 180 (south) and 1800 s (north's invitation): median index 2.
    assert today.latency_p50 is not None and abs(today.latency_p50 - 180) < 1
    assert today.latency_p95 is not None and abs(today.latency_p95 - 1800) < 1
    assert all(d.sent == 0 and d.latency_p50 is None for d in days[:-1])
    assert (south[-1].sent, south[-1].failed) == (3, 0)

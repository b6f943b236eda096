"""Nobody unwatched: every pool a request can reach has someone in it, routing to an empty pool
is refused (CLI and set-up page), and a request that still lands where nobody watches reaches
the clinic's fallback recipient; the admin dashboard counts such requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from gateway.admin import dashboard, demo
from gateway.careteam import digests, pools
from gateway.models import Clinic, RoutingRule
from gateway.outbound.notify import Kind
from gateway.services import Services
from gateway.web.app import create_app
from tests.careteam.helpers import (
    decoded,
    deliver_due,
    notifications,
    pool_by_slug,
    post,
    sign_in,
)
from tests.support.canaries import CANARY_TEXT
from tests.support.cli import cb, write_config
from tests.support.world import FakeClock, World


@pytest.fixture
async def browser(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def test_demo_seed_puts_its_staff_in_every_pool(services: Services) -> None:
    await demo.seed(services)
    async with services.sessions() as s:
        clinic = await s.scalar(select(Clinic).where(Clinic.slug == demo.DEMO_CLINIC))
        assert clinic is not None
        every_pool = await pools.pools_of(s, clinic.id)
        assert len(every_pool) == 4
        for pool in every_pool:
            assert len(await pools.members_of(s, pool.id)) == 3, pool.slug
        assert await pools.unwatched_pool_ids(s, clinic.id) == set()
        fallback = await digests.fallback_recipient(s, clinic)
        assert fallback is not None and fallback.role == "clinic_admin"


async def test_first_staff_member_watches_every_empty_pool(
    services: Services, world: World
) -> None:
    clinic = await world.clinic()
    async with services.sessions() as s:
        assert len(await pools.unwatched_pool_ids(s, clinic.id)) == 4
    first = await world.staff(clinic, role="provider")
    second = await world.staff(clinic, role="nurse")
    async with services.sessions() as s:
        assert await pools.unwatched_pool_ids(s, clinic.id) == set()
        for pool in await pools.pools_of(s, clinic.id):
            assert [m.id for m in await pools.members_of(s, pool.id)] == [first.id]
        assert second.id not in {m.id for p in await pools.pools_of(s, clinic.id)
                                 for m in await pools.members_of(s, p.id)}  # fmt: skip


def test_cli_refuses_routing_to_an_empty_pool(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    for args in (("keys", "init"), ("db", "upgrade")):
        assert cb(cfg, *args).returncode == 0
    assert cb(cfg, "clinic", "add", "east", "--name", "East Clinic").returncode == 0
    assert cb(cfg, "pool", "add", "--clinic", "east", "nobody", "--name", "Empty").returncode == 0

    refused = cb(cfg, "routing", "add", "--clinic", "east", "--type", "*", "--pool", "nobody")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "has no members" in refused.stderr and "add-member" in refused.stderr
    rules = json.loads(cb(cfg, "routing", "list", "--clinic", "east", "--json").stdout)
    assert all(r["pool"] != "nobody" for r in rules)

    listed = json.loads(cb(cfg, "pool", "list", "--clinic", "east", "--json").stdout)
    assert {p["slug"]: p["members"] for p in listed}["nobody"] == 0

    # The fallback recipient: nobody before any staff, then the first provider by default.
    assert "no fallback recipient" in cb(cfg, "pool", "fallback", "--clinic", "east").stdout
    added = cb(cfg, "staff", "add", "--clinic", "east", "--email", "dr@east.example",
               "--name", "Dr. East", "--role", "provider")  # fmt: skip
    assert added.returncode == 0, added.stderr
    staff_id = added.stdout.split()[1]
    shown = cb(cfg, "pool", "fallback", "--clinic", "east").stdout
    assert staff_id in shown and "default" in shown
    chosen = cb(cfg, "pool", "fallback", "--clinic", "east", staff_id)
    assert chosen.returncode == 0 and "chosen" in chosen.stdout
    # The first staff member now watches every pool, so routing there is allowed.
    routed = cb(cfg, "routing", "add", "--clinic", "east", "--type", "*", "--pool", "nobody")
    assert routed.returncode == 0, routed.stderr

    # The urgent reply deadline is a clinic setting.
    assert cb(cfg, "clinic", "set", "east", "--urgent-sla-minutes", "30").returncode == 0
    [east] = json.loads(cb(cfg, "clinic", "list", "--json").stdout)
    assert east["urgent_sla_minutes"] == 30 and east["fallback_staff_id"] == staff_id
    bad = cb(cfg, "clinic", "set", "east", "--urgent-sla-minutes", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "minutes" in bad.stderr


async def test_setup_page_refuses_routing_to_an_empty_pool(
    services: Services, world: World, browser: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    await world.staff(clinic, email="admin@clinic.example", role="clinic_admin")
    await sign_in(browser, "admin@clinic.example")
    r = await post(
        browser, "/staff/setup", "/staff/setup",
        {"action": "add-pool", "slug": "night", "name": "Night shift"},
    )  # fmt: skip
    assert r.status_code == 303
    night = await pool_by_slug(services, clinic.id, "night")
    page = await browser.get("/staff/setup")
    assert 'data-unwatched="night"' in page.text and "Nobody watches this pool." in page.text

    r = await post(
        browser, "/staff/setup", "/staff/setup",
        {"action": "add-rule", "request_type": "*", "pool_id": night.id, "sla_hours": ""},
    )  # fmt: skip
    assert r.status_code == 422
    assert 'id="error"' in r.text and "has no members" in r.text
    async with services.sessions() as s:
        rules = await s.scalars(select(RoutingRule).where(RoutingRule.clinic_id == clinic.id))
        existing = list(rules)
    assert all(rule.pool_id != night.id for rule in existing)

    # Re-pointing an existing rule at it is refused the same way.
    r = await post(
        browser, "/staff/setup", "/staff/setup",
        {"action": "update-rule", "rule_id": existing[0].id, "pool_id": night.id,
         "sla_hours": ""},
    )  # fmt: skip
    assert r.status_code == 422 and "has no members" in r.text


async def test_request_in_an_empty_pool_reaches_the_fallback_recipient(
    services: Services, world: World, clock: FakeClock, browser: httpx.AsyncClient
) -> None:
    clinic = await world.clinic()
    admin = await world.staff(clinic, email="admin@clinic.example", role="clinic_admin")
    provider = await world.staff(clinic, email="dr@clinic.example", role="provider")
    refills = await pool_by_slug(services, clinic.id, "refills")
    async with services.transaction() as s:
        await pools.remove_member(s, pool=refills, staff_id=admin.id, actor="test")
    patient = await world.patient(clinic)

    thread = await world.thread(
        clinic, patient, request_type="medication_renewal", subject=CANARY_TEXT, body=CANARY_TEXT
    )
    assert thread.pool_id == refills.id
    [notice] = await notifications(services, Kind.UNWATCHED_REQUEST)
    assert notice.staff_id == admin.id  # the default: the first clinic admin
    assert notice.context["thread_id"] == thread.id and notice.context["pool_id"] == refills.id

    # Non-urgent notices gather for the coalescing window, then go.
    clock.advance(seconds=services.config.delivery.coalesce_seconds + 1)
    outbox = await deliver_due(services)
    assert notice.id in outbox
    text = decoded(outbox[notice.id])
    assert "a pool with no members" in text and "Refills" in text
    assert f"/staff/threads/{thread.id}" in text
    assert CANARY_TEXT not in text and "CANARY" not in text

    # The dashboard counts it, with no PHI.
    async with services.sessions() as s:
        assert await dashboard.unwatched_requests(s, dashboard.Scope(clinic.id)) == 1
    await sign_in(browser, "admin@clinic.example")
    page = await browser.get("/admin")
    assert page.status_code == 200
    assert 'id="unwatched-count">1<' in page.text and CANARY_TEXT not in page.text

    # A chosen fallback recipient (set on the set-up page) gets the next one.
    r = await post(
        browser, "/staff/setup", "/staff/setup", {"action": "fallback", "staff_id": provider.id}
    )
    assert r.status_code == 303
    await world.thread(clinic, patient, request_type="medication_renewal", urgent=True)
    latest = (await notifications(services, Kind.UNWATCHED_REQUEST))[-1]
    assert latest.staff_id == provider.id and latest.context["urgent_count"] == 1
    assert latest.next_attempt_at <= clock.now()  # urgent: sent at once

    # Once someone watches the pool again, the count drops.
    async with services.transaction() as s:
        await pools.add_member(s, pool=refills, staff_id=provider.id, actor="test")
    async with services.sessions() as s:
        assert await dashboard.unwatched_requests(s, dashboard.Scope(clinic.id)) == 0

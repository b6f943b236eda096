"""Logs hold ids and hashes only: the admin flows run with canary PHI and their logs are grepped.

The flows: a patient with canary name and address, a notification whose relay reply quotes
the address, domain onboarding and check, the dashboard, /metrics, the audit page, the
quarantine read/release/discard of a canary message, and the real CLI (its stderr too).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from gateway.admin import domains
from gateway.admin.clinics import get_clinic
from gateway.config import LogConfig
from gateway.logs import setup_logging
from gateway.outbound import notify
from gateway.outbound.notify import Kind, Notice
from gateway.services import Services
from tests.admin.dnsserver import Zone
from tests.admin.helpers import Cli, held_in_quarantine, post_page, sign_in
from tests.admin.logcanary import capture, hits
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN
from tests.support.world import World


async def test_admin_flows_log_no_phi(
    dns_services: Services, dns: tuple[Zone, int], world: World, web, cli: Cli
) -> None:
    svc, (zone, _) = dns_services, dns
    with capture() as buf:
        clinic = await world.clinic("north")
        patient = await world.patient(
            clinic, given_name=CANARY_GIVEN, family_name=CANARY_FAMILY, email=CANARY_EMAIL
        )
        async with svc.transaction() as s:
            row = await notify.enqueue(
                s,
                svc.keyring,
                notice=Notice(Kind.PASSWORD_RESET),
                clinic_id=clinic.id,
                recipient=CANARY_EMAIL,
                now=svc.clock.now() - timedelta(minutes=5),
                patient_id=patient.id,
            )
            row.state, row.last_error = "deferred", f"450 <{CANARY_EMAIL}> mailbox busy"
        await world.staff(None, role="operator", email="ops@carebridge.example")
        ops = web()
        await sign_in(ops, "ops@carebridge.example")
        r = await post_page(ops, "/admin/domains?clinic=north", "/admin/domains",
                            {"clinic": "north", "sending_domain": "north.example",
                             "reply_domain": "reply.north.example"})  # fmt: skip
        assert r.status_code == 200
        async with svc.sessions() as s:
            c = await get_clinic(s, "north")
            zone.publish(
                [x.to_json() for x in domains.records(svc.config, c,
                                                      await domains.clinic_keys(s, c))]
            )  # fmt: skip
        assert (await domains.check_clinic(svc, "north", actor="test")).ok
        for page in ("/admin", "/admin/audit", "/admin/quarantine", "/metrics"):
            assert (await ops.get(page)).status_code == 200, page
        a, b = await held_in_quarantine(svc, clinic.id, 2)
        for item, action in ((a, "read"), (a, "release"), (b, "discard")):
            resp = await post_page(
                ops, f"/admin/quarantine/{item}", f"/admin/quarantine/{item}/{action}", {}
            )
            assert resp.status_code in (200, 303), (action, resp.status_code)
        for args in (("domain", "check", "north"), ("domain", "dns", "north"),
                     ("queue", "list", "--json"), ("quarantine", "list")):  # fmt: skip
            done = cli(*args)
            assert "Traceback" not in done.stderr
            assert hits(done.stderr) == [], args
    logged = buf.getvalue()
    assert "carebridge." in logged  # the capture saw the flows' log lines at all
    assert hits(logged) == []


def test_the_grep_finds_a_leak_in_either_format() -> None:
    """Positive control: a canary logged by mistake is found in the text and JSON forms.

    It is logged on a ``carebridge.test`` logger so the whole-run check does not count it.
    """
    with capture() as buf:
        logging.getLogger("carebridge.test.leak").info("looked up %s", CANARY_EMAIL)
        logging.getLogger("carebridge.domains").info("looked up clinic %s", "c1")
    found = hits(buf.getvalue())
    assert len(found) == 2  # one text line, one JSON line
    assert all("carebridge.test.leak" in line for _, line in found)


def test_json_log_lines_are_one_object_each(capsys) -> None:
    cb = logging.getLogger("carebridge")
    saved = (cb.handlers[:], cb.level, cb.propagate)
    try:
        setup_logging(LogConfig(level="INFO", format="json"))
        log = logging.getLogger("carebridge.domains")
        log.info("clinic %s DNS check: %d/%d records ok", "c1", 7, 8)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("check failed for clinic %s", "c1")
        log.debug("not at INFO")
    finally:
        cb.handlers[:], cb.level, cb.propagate = saved[0], saved[1], saved[2]
    lines = capsys.readouterr().err.strip().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["msg"] for d in docs] == [
        "clinic c1 DNS check: 7/8 records ok",
        "check failed for clinic c1",
    ]
    assert {tuple(sorted(d)) for d in docs} >= {("level", "logger", "msg", "ts")}
    assert docs[1]["exc"] == "ValueError" and "boom" not in lines[1]

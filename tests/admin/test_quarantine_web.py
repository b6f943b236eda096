"""An operator works the quarantine on the web: list, show, read (audited), release, discard."""

from __future__ import annotations

from sqlalchemy import select

from gateway.models import AuditEvent, InboundMessage, QuarantineItem
from gateway.services import Services
from tests.admin.helpers import held_in_quarantine, post_page, sign_in
from tests.support.canaries import CANARY_EMAIL, CANARY_TEXT
from tests.support.world import World


async def test_show_read_release_discard_each_audited(
    services: Services, world: World, web
) -> None:
    north, south = await world.clinic("north"), await world.clinic("south")
    a, b = await held_in_quarantine(services, north.id, 2)
    (other,) = await held_in_quarantine(services, south.id)
    await world.staff(None, role="operator", email="ops@carebridge.example")
    await world.staff(south, role="clinic_admin", email="admin@south.example")
    ops = web()
    await sign_in(ops, "ops@carebridge.example")

    listing = (await ops.get("/admin/quarantine")).text
    assert a in listing and b in listing and other in listing
    shown = (await ops.get(f"/admin/quarantine/{a}")).text
    assert "not_authenticated" in shown
    for page in (listing, shown):
        assert CANARY_EMAIL not in page and CANARY_TEXT not in page

    read = await post_page(ops, f"/admin/quarantine/{a}", f"/admin/quarantine/{a}/read", {})
    assert read.status_code == 200 and CANARY_TEXT in read.text  # an operator's audited read

    discarded = await post_page(ops, f"/admin/quarantine/{b}", f"/admin/quarantine/{b}/discard", {})
    assert discarded.status_code == 303
    again = await post_page(ops, f"/admin/quarantine/{b}", f"/admin/quarantine/{b}/discard", {})
    assert again.status_code == 400 and "already discarded" in again.text

    released = await post_page(ops, f"/admin/quarantine/{a}", f"/admin/quarantine/{a}/release", {})
    assert released.status_code == 303, released.text

    async with services.sessions() as s:
        states = dict((await s.execute(select(QuarantineItem.id, QuarantineItem.state))).all())
        erased = await s.scalar(
            select(InboundMessage.raw)
            .join(QuarantineItem, QuarantineItem.inbound_id == InboundMessage.id)
            .where(QuarantineItem.id == b)
        )
        events = (
            await s.execute(
                select(AuditEvent.action, AuditEvent.object_id, AuditEvent.actor).where(
                    AuditEvent.action.startswith("quarantine.")
                )
            )
        ).all()
    assert states[a] == "released" and states[b] == "discarded" and states[other] == "held"
    assert erased == b""
    assert {(act, obj) for act, obj, _ in events} == {
        ("quarantine.read", a),
        ("quarantine.discard", b),
        ("quarantine.release", a),
    }
    assert all(actor.startswith("staff:") for _, _, actor in events)

    # A clinic admin sees and acts on their clinic's items only.
    admin = web()
    await sign_in(admin, "admin@south.example")
    mine = (await admin.get("/admin/quarantine")).text
    assert other in mine and a not in mine
    assert (await admin.get(f"/admin/quarantine/{a}")).status_code == 404

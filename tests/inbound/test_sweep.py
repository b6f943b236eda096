"""A node that dies between 250 and processing leaves ``received`` rows; every other node's
sweep adopts them once they are ``adopt_after_seconds`` old, each row is processed exactly
once however many nodes sweep, and a steady stream of mail never starves processing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from sqlalchemy import func, select

from gateway.inbound import intake as intake_module
from gateway.inbound.routing import Target
from gateway.models import AuditEvent, InboundMessage
from tests.inbound.helpers import Story, compose
from tests.support.world import FakeClock


async def _store(story: Story, intake, n: int, tag: str) -> list[str]:
    """What a node killed right after its 250s leaves behind: stored, never processed."""
    to = f"postmaster@{story.clinic.reply_domain}"
    ids: list[str] = []
    for i in range(n):
        stored = await intake.receive(
            compose(
                sender="ops@example.org", to=to, body=f"{tag} {i}", message_id=f"<{tag}-{i}@x>"
            ),
            source="smtp",
            targets=[Target("postmaster", story.clinic.id, None)],
            process=False,
        )
        ids.extend(stored.inbound_ids)
    return ids


async def _states(story: Story) -> Counter[str]:
    async with story.services.sessions() as s:
        return Counter((await s.scalars(select(InboundMessage.state))).all())


async def test_a_survivor_adopts_a_dead_nodes_messages_once_they_are_old_enough(
    story: Story, make_intake, clock: FakeClock
):
    dead, survivor = make_intake(story.services), make_intake(story.services)
    await _store(story, dead, 5, "orphan")
    assert await survivor.recover() == 5  # start-up takes everything, stale or not
    await survivor.drain()
    assert (await _states(story))["kept"] == 5

    await _store(story, dead, 3, "late")
    adopt_after = story.services.config.inbound.adopt_after_seconds
    clock.advance(seconds=adopt_after - 1)
    assert await survivor.sweep() == 0  # its node may still be working on them
    clock.advance(seconds=2)
    assert await survivor.sweep() == 3
    await survivor.drain()
    assert await _states(story) == Counter({"kept": 8})


async def test_two_sweeping_nodes_process_each_message_exactly_once(
    story: Story, make_intake, clock: FakeClock
):
    dead = make_intake(story.services)
    ids = await _store(story, dead, 30, "shared")
    clock.advance(seconds=story.services.config.inbound.adopt_after_seconds + 1)
    a, b = make_intake(story.services), make_intake(story.services)
    adopted = await asyncio.gather(a.sweep(), b.sweep())
    if story.services.engine.dialect.name == "postgresql":
        # A node stamps what it adopts under SKIP LOCKED: the backlog is shared, not doubled.
        assert sum(adopted) == 30
        assert await a.sweep() == 0 and await b.sweep() == 0  # adopted rows are not retaken
    await asyncio.gather(a.drain(), b.drain())
    assert await _states(story) == Counter({"kept": 30})
    async with story.services.sessions() as s:
        audited = Counter(
            (
                await s.scalars(
                    select(AuditEvent.object_id).where(
                        AuditEvent.action == "inbound.kept", AuditEvent.object_id.in_(ids)
                    )
                )
            ).all()
        )
    assert audited == Counter({i: 1 for i in ids})  # one outcome per message


async def test_an_adopted_row_is_offered_again_when_its_adopter_dies_too(
    story: Story, make_intake, clock: FakeClock
):
    first = make_intake(story.services)
    await _store(story, first, 4, "twice")
    adopt_after = story.services.config.inbound.adopt_after_seconds
    clock.advance(seconds=adopt_after + 1)
    adopter = make_intake(story.services)
    adopter._closing = True  # adopts, then "dies" before processing anything
    assert await adopter.sweep() == 4
    assert (await _states(story))["received"] == 4
    survivor = make_intake(story.services)
    if story.services.engine.dialect.name == "postgresql":
        assert await survivor.sweep() == 0  # the adopter's stamp still holds
    clock.advance(seconds=adopt_after + 1)
    assert await survivor.sweep() == 4
    await survivor.drain()
    assert await _states(story) == Counter({"kept": 4})


async def test_the_sweep_runs_by_itself_on_every_node(story: Story, with_config, make_intake):
    services = with_config(story.services, inbound={"sweep_seconds": 0.05})
    dead = make_intake(services)
    await _store(story, dead, 2, "periodic")
    survivor = make_intake(services)
    await survivor.recover()  # starts the sweeper
    await _store(story, dead, 2, "after-start")
    story.services.clock.advance(seconds=services.config.inbound.adopt_after_seconds + 1)
    deadline = time.monotonic() + 20
    while (await _states(story))["received"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await _states(story) == Counter({"kept": 4})


async def test_a_steady_stream_does_not_starve_processing(story: Story, make_intake, monkeypatch):
    """Processing waits for lulls in SMTP storing, but never longer than MAX_DEFER_SECONDS at
    a stretch: 50 messages/s with no lull between them must still be processed as they come,
    not ten per MAX_DEFER_SECONDS (which left a 10-minute soak with 9,000 unprocessed)."""
    monkeypatch.setattr(intake_module, "MAX_DEFER_SECONDS", 1.0)
    intake = make_intake(story.services)
    to = f"postmaster@{story.clinic.reply_domain}"
    sent = 200
    for i in range(sent):  # every 20 ms: never the 50 ms lull processing waits for
        await intake.receive(
            compose(sender="ops@example.org", to=to, body=f"s {i}", message_id=f"<s-{i}@x>"),
            source="smtp",
            targets=[Target("postmaster", story.clinic.id, None)],
        )
        await asyncio.sleep(0.02)
    async with story.services.sessions() as s:
        waiting = await s.scalar(
            select(func.count())
            .select_from(InboundMessage)
            .where(InboundMessage.state == "received")
        )
    # Deferring batch by batch would have processed at most 4 s / 1 s x 10 = 40 by now.
    assert waiting is not None and waiting <= sent // 2, waiting
    await intake.drain()

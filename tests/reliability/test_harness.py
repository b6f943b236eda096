"""The reckoning must be able to say "lost": check it against a store missing a message."""

from __future__ import annotations

from gateway.services import Services
from tests.reliability.harness import reckon
from tests.reliability.sink import Sink


async def test_reckoning_reports_a_message_that_never_reached_the_store(
    services: Services,
) -> None:
    r = await reckon(services, {"<ghost@example.org>"}, [Sink()])
    assert r.lost == ["<ghost@example.org>"]
    assert r.audit_ok and r.never_delivered == []
    if services.engine.dialect.name == "sqlite":
        assert r.integrity == "ok"

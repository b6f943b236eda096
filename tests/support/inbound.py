"""Fixtures for stories of inbound mail: a dnslib DNS server on loopback, carebridge's SMTP
intake on a free port, a patient with a thread to reply to. A pytest plug-in (registered in
tests/conftest.py), so the inbound and the security tests share the fixtures without importing
one another's conftest; plain helpers live in tests/inbound/helpers.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from gateway.careteam import threads
from gateway.inbound.intake import Intake
from gateway.inbound.smtp import SmtpPart
from gateway.services import Services
from handlers import ROUTING
from tests.inbound.helpers import DictResolver, Dns, Story
from tests.support.net import dns_servers
from tests.support.world import World


@pytest.fixture
def dns_server() -> Iterator[Dns]:
    resolver = DictResolver()
    with dns_servers(resolver) as port:
        yield Dns(resolver, port)


@pytest.fixture
def inbound_services(services: Services, dns_server: Dns) -> Services:
    """``services`` whose DNS goes to the loopback dnslib server."""
    cfg = services.config
    cfg = dataclasses.replace(
        cfg,
        dns=dataclasses.replace(
            cfg.dns, nameservers=(f"127.0.0.1:{dns_server.port}",), timeout_seconds=2.0
        ),
    )
    return dataclasses.replace(services, config=cfg)


@pytest.fixture
async def story(inbound_services: Services) -> Story:
    world = World(inbound_services)
    clinic = await world.clinic()
    await world.staff(clinic, role="nurse")
    patient = await world.patient(clinic, email="pat@example.org")
    async with inbound_services.transaction() as s:
        thread = await threads.create_thread(
            s,
            inbound_services,
            patient=patient,
            clinic=clinic,
            request_type="question",
            subject="About my dose",
            body="Can I take it with food?",
            source="portal",
            actor=f"patient:{patient.id}",
        )
    return Story(inbound_services, world, clinic, patient, thread)


@pytest.fixture
async def make_intake(services: Services) -> AsyncIterator[Callable[[Services], Intake]]:
    """Intakes for a test, closed afterwards (each holds a read-only engine on SQLite).

    It depends on ``services`` so it is torn down first: closing an intake finishes its
    processing, which must happen while the store's engine is still open."""
    made: list[Intake] = []

    def make(services: Services) -> Intake:
        made.append(Intake(services, ROUTING))
        return made[-1]

    yield make
    for intake in made:
        await intake.close()


@pytest.fixture
async def smtp(inbound_services: Services) -> AsyncIterator[SmtpPart]:
    part = SmtpPart(inbound_services, Intake(inbound_services, ROUTING))
    await part.start()
    try:
        yield part
    finally:
        await part.stop()

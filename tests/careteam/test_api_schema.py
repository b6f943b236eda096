"""schemathesis against the served OpenAPI document of a real server: no server errors.

A real uvicorn serves the whole web app on a free loopback port, in a thread with its own
event loop and its own SQLite store (a clinic, a patient and an API key seeded), and
schemathesis generates requests for every operation from ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway import db
from gateway.admin import apikeys, clinics
from gateway.config import parse_config
from gateway.crypto import KeyRing
from gateway.portal import patients
from gateway.serve import WebPart
from gateway.services import open_services
from gateway.web.api import create_api
from tests.support.net import reserve_port


@dataclass
class Live:
    base_url: str
    key: str
    patient_id: str


def _serve(tmp: Path, port: int, ready: threading.Event, box: dict[str, Any]) -> None:
    url = f"sqlite+aiosqlite:///{tmp}/api.db"
    db.upgrade(url)  # alembic runs its own event loop: before ours starts

    async def main() -> None:
        cfg = parse_config(
            {
                "store": {"url": url},
                "web": {"listen": f"127.0.0.1:{port}", "base_url": f"http://127.0.0.1:{port}"},
                "log": {"level": "WARNING"},
            },
            base_dir=str(tmp),
        )
        services = await open_services(cfg, keyring=KeyRing.generate())
        async with services.transaction() as s:
            org = await clinics.get_or_create_org(s, "org", "Org", "test")
            clinic = await clinics.add_clinic(
                s,
                org=org,
                slug="clinic",
                name="Clinic",
                reply_domain="r.clinic.example",
                actor="test",
            )
            enrolled = await patients.enroll(
                s,
                services.keyring,
                clinic=clinic,
                given_name="Pat",
                family_name="Ex",
                date_of_birth=date(1980, 1, 1),
                email="pat@example.org",
                source="desk",
                actor="test",
            )
            key = await apikeys.create(
                s, name="fuzz", role="admin", org_slug=None, now=services.clock.now(), actor="t"
            )
        box["key"], box["patient_id"] = key.value, enrolled.patient.id
        web = WebPart(services)
        await web.start()
        box["stop"] = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await box["stop"].wait()
        await web.stop()
        await services.close()

    try:
        asyncio.run(main())
    except BaseException as exc:  # surfaced to the test by the fixture
        box["error"] = exc
        ready.set()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    port = reserve_port()
    ready, box = threading.Event(), {}
    thread = threading.Thread(
        target=_serve, args=(tmp_path_factory.mktemp("api"), port, ready, box), daemon=True
    )
    thread.start()
    assert ready.wait(30), "API server did not start"
    if "error" in box:
        raise box["error"]
    yield Live(f"http://127.0.0.1:{port}/api/v1", box["key"], box["patient_id"])
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


# Building the document touches no service, so the schema can be loaded at collection time;
# the test below checks it is exactly what the live server serves.
API_DOC = create_api(None).openapi()  # type: ignore[arg-type]
schema = schemathesis.openapi.from_dict(API_DOC)


def test_served_document_is_the_api(live: Live) -> None:
    served = httpx.get(f"{live.base_url}/openapi.json").json()
    assert served["info"]["title"] == "carebridge integration API"
    assert served["paths"] == API_DOC["paths"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, live: Live) -> None:
    negative = {
        str(getattr(loc, "value", loc))
        for loc, info in (case.meta.components if case.meta else {}).items()
        if info.mode == GenerationMode.NEGATIVE
    }
    # Half the time aim at the real patient so valid requests get past the 404s; never touch
    # a component schemathesis made invalid on purpose.
    aim = hash(repr(case.body)) % 2 == 1
    if aim and "path" not in negative and "patient_id" in (case.path_parameters or {}):
        case.path_parameters["patient_id"] = live.patient_id
    if aim and "body" not in negative and isinstance(case.body, dict) and "patient_id" in case.body:
        case.body["patient_id"] = live.patient_id
    headers = {} if "header" in negative else {"Authorization": f"Bearer {live.key}"}
    # Every other default check (server errors, status codes, content types, response
    # schemas, negative data rejection) stays on. Schema-valid data may still be refused for
    # reasons a schema cannot state (a past appointment, an unknown clinic, an address that
    # fails strict validation), so "valid data accepted" is not one of them.
    case.call_and_validate(
        base_url=live.base_url,
        headers=headers,
        excluded_checks=[positive_data_acceptance],
    )

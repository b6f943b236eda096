"""The web layer's own promises, whichever router answers: security headers on every
response, no caching of pages that may show PHI, and clear statuses for paths that do not exist."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.services import Services
from gateway.web.app import create_app


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8025") as c:
        yield c


@pytest.mark.parametrize("path", ["/healthz", "/enrol", "/portal", "/no-such-page", "/api/v1/x"])
async def test_every_response_carries_the_security_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]


async def test_pages_that_may_show_phi_are_never_cached(client: httpx.AsyncClient) -> None:
    assert (await client.get("/portal")).headers.get("cache-control") == "no-store"
    assert (await client.get("/enrol")).headers.get("cache-control") == "no-store"
    assert "no-store" not in (await client.get("/healthz")).headers.get("cache-control", "")


async def test_unknown_paths_are_a_clear_404(client: httpx.AsyncClient) -> None:
    page = await client.get("/no-such-page")
    assert page.status_code == 404
    api = await client.get("/api/v1/no-such-thing")
    assert api.status_code in (401, 404)
    assert "Traceback" not in api.text and "Traceback" not in page.text


async def test_health_is_cheap_and_says_ok(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"

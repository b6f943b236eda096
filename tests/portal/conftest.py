"""Fixtures for the patient journey: the real ASGI app over httpx, and form helpers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from gateway.services import Services
from gateway.web.app import create_app

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF field in the form"
    return match.group(1)


@pytest.fixture
def app(services: Services) -> FastAPI:
    return create_app(services)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def post_form(
    client: httpx.AsyncClient, form_path: str, data: dict[str, str], action: str | None = None
) -> httpx.Response:
    """GET the form page (for its CSRF token), then POST the form like a browser would."""
    page = await client.get(form_path)
    assert page.status_code == 200, page.status_code
    return await client.post(action or form_path, data={**data, "csrf_token": csrf_of(page.text)})

"""Fixtures for the admin area: a loopback DNS server and the real ``carebridge`` command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.services import Services
from gateway.web.app import create_app
from tests.admin.dnsserver import Zone, dns_server

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "from gateway.cli import main; main()"


@pytest.fixture
def dns() -> Iterator[tuple[Zone, int]]:
    with dns_server() as served:
        yield served


@pytest.fixture
def dns_services(
    services: Services, dns: tuple[Zone, int], with_config: Callable[..., Services]
) -> Services:
    """``services`` whose ``[dns] nameservers`` is the loopback server."""
    return with_config(
        services, dns={"nameservers": (f"127.0.0.1:{dns[1]}",), "timeout_seconds": 2.0}
    )


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Cli:
    config_path: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-c", _MAIN, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )


@pytest.fixture
def cli(dns_services: Services, tmp_path: Path) -> Cli:
    """The real command line, in a subprocess, on the test's store, keys and DNS server."""
    cfg = dns_services.config
    path = tmp_path / "cli-config.toml"
    write_toml(
        path,
        {
            "store": {"url": cfg.store.url},
            "keys": {"file": str(cfg.path(cfg.keys.file))},
            "smtp": {"hostname": cfg.smtp.hostname},
            "dns": {
                "nameservers": list(cfg.dns.nameservers),
                "timeout_seconds": cfg.dns.timeout_seconds,
            },
            "log": {"level": "DEBUG"},
        },
    )
    return Cli(path)


# -- the web app, signed in ----------------------------------------------------------------
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery staple 42"


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


@pytest.fixture
async def web(dns_services: Services) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    """Make real HTTP clients (httpx over ASGI) on the app; each keeps its own cookies."""
    app = create_app(dns_services)
    made: list[httpx.AsyncClient] = []

    def new() -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        made.append(c)
        return c

    yield new
    for c in made:
        await c.aclose()


async def sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/staff/login")
    r = await client.post(
        "/staff/login",
        data={"email": email, "password": PASSWORD, "next": "/admin",
              "csrf_token": csrf_of(page.text)},
    )  # fmt: skip
    assert r.status_code == 303, r.text


async def post_page(
    client: httpx.AsyncClient, page: str, action: str, data: dict[str, str]
) -> httpx.Response:
    """POST a form the way a browser does: with the CSRF token from the page it is on."""
    html = (await client.get(page)).text
    return await client.post(action, data={**data, "csrf_token": csrf_of(html)})

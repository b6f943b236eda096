"""Fixtures for the admin area: a loopback DNS server and the real ``carebridge`` command."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.services import Services
from gateway.web.app import create_app
from tests.admin.dnsserver import Zone, dns_server
from tests.admin.helpers import Cli, write_toml


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

"""Fixtures of the reliability suites: a loopback DNS, and services that use it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from gateway.services import Services
from tests.reliability.dns import LoopbackDns


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        yield server


@pytest.fixture
def rservices(
    services: Services, dns: LoopbackDns, with_config: Callable[..., Services]
) -> Services:
    """``services`` whose DNS questions (SPF, DKIM, DMARC) go to the loopback server."""
    return with_config(services, dns={"nameservers": (dns.nameserver,), "timeout_seconds": 1.0})

"""What every route needs from the app: the services it was built with."""

from __future__ import annotations

from fastapi import Request

from gateway.services import Services


def services_of(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services

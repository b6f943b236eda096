"""What every route needs from the app: the services it was built with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from gateway.services import Services


def services_of(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


def client_address(request: Request) -> str:
    """The client's address as the server reports it (uvicorn's ``scope["client"]``; the real
    client once the front end's trusted proxies are configured)."""
    return request.client.host if request.client else ""


# Query parameters shared by the HTML routes. Each has a bound, so a huge or garbage value is
# a 400 naming the parameter (see gateway.web.pages.bad_parameters), never a 500.
ClinicParam = Annotated[str, Query(max_length=64)]
ShortParam = Annotated[str, Query(max_length=32)]
TextParam = Annotated[str, Query(max_length=200)]

"""``/metrics`` for Prometheus: store gauges are refreshed at scrape time."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.admin.dashboard import refresh_gauges
from gateway.web.deps import services_of

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    # The same queries as the admin dashboard, so the two never disagree.
    await refresh_gauges(services)
    return Response(
        services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )

"""``/metrics`` for Prometheus: store gauges are refreshed at scrape time."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select

from gateway.models import Notification, QuarantineItem
from gateway.web.health import services_of

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    m = services.metrics
    now = services.clock.now()
    started = time.perf_counter()
    async with services.sessions() as s:
        counts = dict(
            (await s.execute(select(Notification.state, func.count()).group_by(Notification.state)))
            .tuples()
            .all()
        )
        oldest = await s.scalar(
            select(func.min(Notification.created_at)).where(
                Notification.state.in_(("queued", "deferred"))
            )
        )
        held = await s.scalar(
            select(func.count()).select_from(QuarantineItem).where(QuarantineItem.state == "held")
        )
    m.db_latency.observe(time.perf_counter() - started)
    from gateway.models.outbound import NOTIFICATION_STATES

    for state in NOTIFICATION_STATES:
        m.queue_depth.labels(state=state).set(counts.get(state, 0))
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    m.queue_oldest_age.set((now - oldest).total_seconds() if oldest else 0)
    m.quarantine_size.set(held or 0)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

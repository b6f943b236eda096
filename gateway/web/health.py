"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from jinja2 import Environment, TemplateError
from sqlalchemy import text

from gateway.services import Services
from gateway.templating import PROBE_TEMPLATES
from gateway.web.deps import services_of

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _ping(services: Services) -> None:
    async with services.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _templates_load(env: Environment) -> bool:
    """A page and an email template load through the app's environment. Compiled once and
    cached by Jinja2; later calls only check the files are still there."""
    try:
        for name in PROBE_TEMPLATES:
            env.get_template(name)
    except (TemplateError, OSError):
        return False
    return True


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    checks: dict[str, bool] = {"keys": bool(services.keyring.keys)}
    # A node that cannot render pages or emails (say, a package installed without its
    # templates) must not take traffic.
    checks["templates"] = _templates_load(request.app.state.templates)
    try:
        # A hung database must make the node unready, not hang the load balancer's probe.
        await asyncio.wait_for(_ping(services), timeout=2.0)
        checks["database"] = True
    except Exception:
        checks["database"] = False
    # SMTP intake must be listening when enabled, even before its part has reported in.
    if services.config.smtp.enabled:
        checks["smtp"] = False
    checks.update(services.ready)
    ok = all(checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

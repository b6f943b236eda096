"""``/metrics`` for Prometheus: store gauges are refreshed at scrape time.

The numbers are PHI-free but still say how busy each clinic is, so they are not public:

* with ``[web] metrics_token_file``, a scrape must send ``Authorization: Bearer <token>``;
* with ``[web] metrics_listen``, metrics are served on that address only (see
  :func:`create_metrics_app`) and the web port answers 404;
* with neither, the web port answers only loopback clients (a local Prometheus or agent).
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response

from gateway.admin.dashboard import refresh_gauges
from gateway.errors import ConfigError
from gateway.services import Services
from gateway.web.deps import services_of

router = APIRouter(include_in_schema=False)
BEARER_STATE = "metrics_bearer"


def read_token(services: Services) -> str:
    """The bearer token from ``[web] metrics_token_file`` ("" when not configured)."""
    name = services.config.web.metrics_token_file
    if not name:
        return ""
    path = services.config.path(name)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("web.metrics_token_file", f"cannot read it: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError("web.metrics_token_file", "must hold a token of at least 16 characters")
    return token


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_access(request: Request, *, own_listener: bool) -> None:
    services = services_of(request)
    token: str = getattr(request.app.state, BEARER_STATE, "")
    if services.config.web.metrics_listen and not own_listener:
        raise HTTPException(status_code=404)
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise HTTPException(
                status_code=401,
                detail="metrics need the bearer token from [web] metrics_token_file",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return
    if not own_listener and not _loopback(request):
        raise HTTPException(
            status_code=403,
            detail="metrics are served to loopback clients only; set [web] metrics_token_file",
        )


async def _render(request: Request) -> Response:
    services = services_of(request)
    # The same queries as the admin dashboard, so the two never disagree.
    await refresh_gauges(services)
    return Response(
        services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    _check_access(request, own_listener=False)
    return await _render(request)


def create_metrics_app(services: Services) -> FastAPI:
    """The app behind ``[web] metrics_listen``: ``/metrics`` and nothing else."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    setattr(app.state, BEARER_STATE, read_token(services))

    @app.get("/metrics", include_in_schema=False)
    async def own_metrics(request: Request) -> Response:
        _check_access(request, own_listener=True)
        return await _render(request)

    return app

"""The web application: routers listed explicitly, security headers, no import-time registry."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.services import Services
from gateway.templating import build_environment
from gateway.web import admin, api, desk, health, metrics, pages, portal, portal_public, staff
from gateway.web.limits import InputLimits, Limits
from gateway.web.security import SecurityHeaders
from gateway.web.sessions import SessionMiddleware
from gateway.web.unsubscribe import router as unsubscribe_router


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="carebridge",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the API documents itself at /api/v1/openapi.json
    )
    app.state.services = services
    app.state.templates = build_environment()
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(unsubscribe_router)
    app.include_router(pages.router)
    app.include_router(portal_public.router)
    app.include_router(portal.router)
    app.include_router(desk.router)
    app.include_router(admin.router)
    app.include_router(admin.wellknown_router)
    app.include_router(staff.router)
    app.mount("/api/v1", api.create_api(services))
    app.add_exception_handler(StarletteHTTPException, pages.html_errors)
    app.add_exception_handler(RequestValidationError, pages.bad_parameters)
    setattr(app.state, metrics.BEARER_STATE, metrics.read_token(services))
    web = services.config.web
    app.add_middleware(SessionMiddleware, services=services)
    app.add_middleware(SecurityHeaders, https=web.base_url.startswith("https://"))
    # Added last, so it runs first: nothing reads a header, a cookie or the body before it.
    app.add_middleware(InputLimits, limits=limits_of(services))
    return app


def limits_of(services: Services) -> Limits:
    web = services.config.web
    return Limits(
        max_header_bytes=web.max_header_bytes,
        max_headers=web.max_headers,
        max_json_bytes=web.max_json_bytes,
        max_form_bytes=web.max_form_bytes,
    )

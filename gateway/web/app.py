"""The web application: routers listed explicitly, security headers, no import-time registry."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.services import Services
from gateway.templating import build_environment
from gateway.web import admin, api, desk, health, metrics, pages, portal, portal_public, staff
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
    app.add_middleware(SessionMiddleware, services=services)
    app.add_middleware(SecurityHeaders)
    return app

"""RFC 9457 problem documents for the REST API, never carrying PHI.

Every error the API returns is ``application/problem+json`` with a stable ``type`` URI, a
short ``title``, the ``status`` and a PHI-free ``detail``. Validation errors list where the
input was wrong (``loc``) and why (``msg``), but never echo the submitted value: a rejected
field may well hold a name or a date of birth.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import CarebridgeError, InvalidAddressError, NotFoundError, UsageError

log = logging.getLogger("carebridge.api")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://carebridge.invalid/problems/"

TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    415: "Unsupported media type",
    422: "Invalid request",
    500: "Internal error",
}


class Problem(BaseModel):
    """The OpenAPI shape of an error response."""

    type: str
    title: str
    status: int
    detail: str = ""
    errors: list[dict[str, Any]] | None = None


class ApiProblem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.slug, self.detail, self.headers = status, slug, detail, headers


def problem(
    status: int,
    slug: str,
    detail: str = "",
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _safe_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        # pydantic's messages describe the rule, not the value; "input" and "ctx" may hold
        # the value itself, so they are dropped.
        out.append(
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "")),
            }
        )
    return out


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem(
        422, "validation", "the request did not match the schema", errors=_safe_errors(exc)
    )


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = {401: "unauthenticated", 403: "forbidden", 404: "not-found", 405: "method"}.get(
        exc.status_code, "http"
    )
    detail = exc.detail if isinstance(exc.detail, str) else ""
    return problem(exc.status_code, slug, detail, headers=dict(exc.headers or {}) or None)


async def _api(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem(exc.status, exc.slug, exc.detail, headers=exc.headers)


async def _carebridge(_: Request, exc: Exception) -> JSONResponse:
    # Our own errors' messages are written PHI-free (see gateway/errors.py).
    if isinstance(exc, NotFoundError):
        return problem(404, "not-found", str(exc))
    if isinstance(exc, InvalidAddressError | UsageError):
        return problem(422, "invalid", str(exc))
    return problem(400, "refused", str(exc))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ApiProblem, _api)
    app.add_exception_handler(CarebridgeError, _carebridge)

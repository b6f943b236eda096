"""Rendering server-side pages, and the pages every audience shares.

:func:`render` is what every HTML route calls: it picks the language (en/es), passes the
gettext functions, the CSRF field and the signed-in principal into the template, and returns
the response. This module also serves the stylesheet (the CSP forbids inline style), the
language switch and the staff sign-in pages, so the staff and admin areas only build what is
behind them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.i18n import LANGUAGES, gettext_for
from gateway.portal import accounts
from gateway.templating import templates_dir
from gateway.web import sessions
from gateway.web.deps import ShortParam, TextParam, client_address, services_of

router = APIRouter(include_in_schema=False)

_LANG_MAX_AGE = 365 * 24 * 3600


def language_of(request: Request, preferred: str | None = None) -> str:
    """``?lang=`` (the switch just clicked), then the cookie, then the account's language,
    then the browser's, then English."""
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return str(asked)
    chosen = request.scope.get("state", {}).get(sessions.LANG_COOKIE)
    if chosen in LANGUAGES:
        return str(chosen)
    if preferred in LANGUAGES:
        return str(preferred)
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "en"


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    lang: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render ``templates/web/<template>`` with the shared page context."""
    env = request.app.state.templates
    assert isinstance(env, Environment)
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        # Remember the switch for the next pages (works without JavaScript).
        sessions.queue_cookie(
            request,
            sessions.cookie_header(
                services_of(request), sessions.LANG_COOKIE, asked, max_age=_LANG_MAX_AGE
            ),
        )
        language = str(asked)
    else:
        language = lang or language_of(request)
    ctx: dict[str, Any] = {
        **gettext_for(language),
        "csrf_field": sessions.csrf_field(request),
        "current_path": request.url.path,
        "principal": request.scope.get("state", {}).get("cb_principal"),
        "flash": None,
    }
    ctx.update(context)
    html = env.get_template(f"web/{template}").render(ctx)
    return HTMLResponse(html, status_code=status_code)


async def html_errors(request: Request, exc: Exception) -> Response:
    """Error pages for people: a page in their language that says what to do next.

    The exception's detail is never shown (whatever raised it might have put a value in it);
    the page is chosen by status code only. API clients (no ``text/html`` in Accept) and
    redirects keep FastAPI's default answer.
    """
    assert isinstance(exc, StarletteHTTPException)
    wants_html = "text/html" in request.headers.get("accept", "")
    if not wants_html or exc.status_code < 400:
        return await http_exception_handler(request, exc)
    response = render(request, "error.html.j2", status_code=exc.status_code, code=exc.status_code)
    for name, value in (exc.headers or {}).items():
        response.headers.setdefault(name, value)
    return response


def parameter_problems(exc: RequestValidationError) -> list[str]:
    """What was wrong with a request's parameters, naming the parameter, never its value."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        rule = str(err.get("msg", "invalid"))
        out.append(f"{'.'.join(loc) or 'request'}: {rule}")
    return out


async def bad_parameters(request: Request, exc: Exception) -> Response:
    """A query or path parameter that does not fit its route: 400 with what was wrong.

    FastAPI's default is a 422 JSON echoing the submitted value; pages answer 400 and say
    which parameter broke which rule, without the value (it may be anything).
    """
    assert isinstance(exc, RequestValidationError)
    problems = parameter_problems(exc)
    if "text/html" in request.headers.get("accept", ""):
        return render(request, "error.html.j2", status_code=400, code=400, problems=problems)
    return JSONResponse({"detail": problems}, status_code=400)


@router.get("/static/carebridge.css")
async def stylesheet() -> FileResponse:
    return FileResponse(
        templates_dir() / "web" / "static" / "carebridge.css",
        media_type="text/css",
        headers={"cache-control": "public, max-age=3600"},
    )


@router.get("/lang/{code}")
async def switch_language(request: Request, code: str, next: TextParam = "/") -> Response:
    """Remember the chosen language in a cookie and go back (works without JavaScript)."""
    services = services_of(request)
    target = sessions.safe_next(next, "/", ("/",))
    response = RedirectResponse(target, status_code=303)
    if code in LANGUAGES:
        sessions.queue_cookie(
            request,
            sessions.cookie_header(services, sessions.LANG_COOKIE, code, max_age=_LANG_MAX_AGE),
        )
    return response


@router.get("/staff/login")
async def staff_login_form(
    request: Request, next: TextParam = "", done: ShortParam = ""
) -> HTMLResponse:
    return render(request, "staff-login.html.j2", error=None, next=next, email="", done=done)


@router.post("/staff/login", dependencies=[Depends(sessions.check_csrf)])
async def staff_login(request: Request) -> Response:
    form = await request.form()
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    code, nxt = str(form.get("code", "")), str(form.get("next", ""))
    try:
        staff_id = await accounts.authenticate(
            services_of(request), "staff", email, password, code, client=client_address(request)
        )
    except accounts.SignInError as exc:
        return render(
            request,
            "staff-login.html.j2",
            status_code=401,
            error=exc,
            next=nxt,
            email=email,
            done="",
        )
    await sessions.start_session(request, "staff", staff_id)
    target = sessions.safe_next(nxt, "/staff", ("/staff", "/admin"))
    return RedirectResponse(target, status_code=303)


@router.post("/staff/logout", dependencies=[Depends(sessions.check_csrf)])
async def staff_logout(request: Request) -> Response:
    await sessions.end_session(request)
    return RedirectResponse("/staff/login", status_code=303)

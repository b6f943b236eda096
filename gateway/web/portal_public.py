"""The portal's doors for people not signed in: sign-in, online enrolment, the registration
link (``/r/``), the view-thread link (``/t/``) and password reset (``/reset/``).

Link pages follow the token rules: GET and HEAD only peek (a mail scanner fetching the link
five times changes nothing); the person's POST consumes; then a redirect, so no token stays
in the address bar or in history. A link never signs anyone in by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway import tokens
from gateway.portal import accounts, enrolment, signup, terms
from gateway.portal import reset as reset_mod
from gateway.portal.signup import FormProblem
from gateway.web import sessions
from gateway.web.deps import ShortParam, TextParam, client_address, services_of
from gateway.web.pages import language_of, render

log = logging.getLogger("carebridge.web.portal")
router = APIRouter(include_in_schema=False)
CSRF = [Depends(sessions.check_csrf)]


def _form_str(form: object, name: str) -> str:
    value = form.get(name) if hasattr(form, "get") else None
    return value if isinstance(value, str) else ""


# -- sign-in ---------------------------------------------------------------------------------


@router.get("/portal/login")
async def login_form(request: Request, next: TextParam = "", done: ShortParam = "") -> HTMLResponse:
    return render(request, "portal/login.html.j2", error=None, next=next, email="", done=done)


@router.post("/portal/login", dependencies=CSRF)
async def login(request: Request) -> Response:
    form = await request.form()
    email, nxt = _form_str(form, "email"), _form_str(form, "next")
    try:
        patient_id = await accounts.authenticate(
            services_of(request),
            "patient",
            email,
            _form_str(form, "password"),
            _form_str(form, "code"),
            client=client_address(request),
        )
    except accounts.SignInError as exc:
        return render(
            request,
            "portal/login.html.j2",
            status_code=401,
            error=exc,
            next=nxt,
            email=email,
            done="",
        )
    await sessions.start_session(request, "patient", patient_id)
    return RedirectResponse(sessions.safe_next(nxt, "/portal", ("/portal",)), status_code=303)


@router.post("/portal/logout", dependencies=CSRF)
async def logout(request: Request) -> Response:
    await sessions.end_session(request)
    return RedirectResponse("/portal/login?done=signed-out", status_code=303)


# -- online enrolment ------------------------------------------------------------------------


def _enrol_page(request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    base: dict[str, Any] = {"error": None, "values": {}, "minutes": None}
    base.update(ctx)
    return render(request, "portal/enrol.html.j2", status_code=status, **base)


@router.get("/enrol")
async def enrol_form(request: Request) -> HTMLResponse:
    return _enrol_page(request)


@router.post("/enrol", dependencies=CSRF)
async def enrol(request: Request) -> Response:
    form = await request.form()
    fields = ("code", "given_name", "family_name", "date_of_birth", "email")
    values = {k: _form_str(form, k) for k in fields}
    client = request.client.host if request.client else "unknown"
    services = services_of(request)
    started = time.monotonic()
    try:
        await enrolment.online_enrol(
            services,
            code=values["code"],
            given_name=values["given_name"],
            family_name=values["family_name"],
            date_of_birth=values["date_of_birth"],
            email=values["email"],
            client_key=client,
            language=language_of(request),
        )
    except enrolment.TooManyAttempts as exc:
        return _enrol_page(request, 429, error="locked", minutes=exc.minutes, values=values)
    except enrolment.EnrolRefused as exc:
        return _enrol_page(request, 400, error=str(exc), values=values)
    # The same page whatever happened, after the same minimum time: neither the answer nor
    # its timing tells whether the person already has an account. (Bad input and the rate
    # limit are answered before any lookup, so they need no padding.)
    floor = services.config.web.enrol_min_answer_ms / 1000
    await asyncio.sleep(max(0.0, floor - (time.monotonic() - started)))
    return RedirectResponse("/enrol/sent", status_code=303)


@router.get("/enrol/sent")
async def enrol_sent(request: Request) -> HTMLResponse:
    return render(request, "portal/enrol-sent.html.j2")


# -- registration link -----------------------------------------------------------------------


async def _register_page(
    request: Request, token: str, status: int = 200, problem: FormProblem | None = None
) -> HTMLResponse:
    services = services_of(request)
    async with services.sessions() as s:
        view = await signup.view_link(s, services, token)
    if view is None:
        return render(request, "portal/link-invalid.html.j2", status_code=404, kind="registration")
    form_secret = ""
    if problem is not None:
        form = await request.form()
        form_secret = _form_str(form, "totp_secret")
    return render(
        request,
        "portal/register.html.j2",
        status_code=status,
        lang=language_of(request, view.patient.language),
        clinic=view.clinic,
        terms_version=terms.CURRENT,
        terms_template=terms.template_for(),
        token=token,
        problem=problem,
        totp_secret=form_secret or signup.new_totp_secret(),
    )


@router.api_route("/r/{token}", methods=["GET", "HEAD"])
async def register_form(request: Request, token: str) -> HTMLResponse:
    """Shows the clinic, the terms and the form. Peeks only: GET/HEAD never consume."""
    return await _register_page(request, token)


@router.post("/r/{token}", dependencies=CSRF)
async def register(request: Request, token: str) -> Response:
    form = await request.form()
    try:
        await signup.complete_registration(
            services_of(request),
            token,
            agree=_form_str(form, "agree") == "yes",
            terms_version=_form_str(form, "terms_version"),
            password=_form_str(form, "password"),
            confirm=_form_str(form, "confirm"),
            totp_secret=_form_str(form, "totp_secret"),
            totp_code=_form_str(form, "code"),
        )
    except FormProblem as problem:
        if problem.code == "invalid":
            return render(
                request, "portal/link-invalid.html.j2", status_code=404, kind="registration"
            )
        return await _register_page(request, token, 400, problem)
    # Away from the token URL; the patient signs in with the password just chosen.
    return RedirectResponse("/portal/login?done=registered", status_code=303)


# -- view-thread link ------------------------------------------------------------------------


@router.api_route("/t/{token}", methods=["GET", "HEAD"])
async def view_thread_link(request: Request, token: str) -> Response:
    """From a "new message" email: to the thread, through sign-in. Peeks only."""
    services = services_of(request)
    async with services.sessions() as s:
        row = await tokens.peek(s, token, "view_thread", services.clock.now())
    if row is None or row.subject_kind != "patient":
        return render(request, "portal/link-invalid.html.j2", status_code=404, kind="thread")
    data = row.data or {}
    thread_id, view = data.get("thread_id"), data.get("view")
    target = "/portal"
    if isinstance(thread_id, str) and thread_id.isalnum():
        target = f"/portal/threads/{thread_id}"
    elif view == "results":
        target = "/portal/results"
    principal = await sessions.current_principal(request)
    if principal is not None and principal.kind == "patient":
        return RedirectResponse(target, status_code=303)
    return RedirectResponse(f"/portal/login?next={target}", status_code=303)


# -- password reset (patients at /portal/reset, staff at /staff/reset; one link page) --------


@router.get("/portal/reset")
async def reset_request_form(request: Request) -> HTMLResponse:
    return render(request, "portal/reset-request.html.j2", action="/portal/reset")


@router.get("/staff/reset")
async def staff_reset_request_form(request: Request) -> HTMLResponse:
    return render(request, "portal/reset-request.html.j2", action="/staff/reset")


async def _request_reset(request: Request, kind: str) -> Response:
    form = await request.form()
    services, started = services_of(request), time.monotonic()
    await reset_mod.request_reset(services, _form_str(form, "email"), kind)
    # Same answer and same minimum time whether or not the address has an account.
    floor = services.config.web.enrol_min_answer_ms / 1000
    await asyncio.sleep(max(0.0, floor - (time.monotonic() - started)))
    return RedirectResponse("/portal/reset/sent", status_code=303)


@router.post("/portal/reset", dependencies=CSRF)
async def reset_request(request: Request) -> Response:
    return await _request_reset(request, "patient")


@router.post("/staff/reset", dependencies=CSRF)
async def staff_reset_request(request: Request) -> Response:
    return await _request_reset(request, "staff")


@router.get("/portal/reset/sent")
async def reset_sent(request: Request) -> HTMLResponse:
    return render(request, "portal/reset-sent.html.j2")


async def _reset_page(
    request: Request, token: str, status: int = 200, problem: FormProblem | None = None
) -> HTMLResponse:
    services = services_of(request)
    async with services.sessions() as s:
        target = await reset_mod.link_target(s, services, token)
    if target is None:
        return render(request, "portal/link-invalid.html.j2", status_code=404, kind="reset")
    return render(
        request,
        "portal/reset-form.html.j2",
        status_code=status,
        lang=language_of(request, target.language),
        token=token,
        problem=problem,
    )


@router.api_route("/reset/{token}", methods=["GET", "HEAD"])
async def reset_form(request: Request, token: str) -> HTMLResponse:
    """The new-password form. Peeks only: GET/HEAD never consume the link."""
    return await _reset_page(request, token)


@router.post("/reset/{token}", dependencies=CSRF)
async def reset(request: Request, token: str) -> Response:
    form = await request.form()
    try:
        kind = await reset_mod.complete_reset(
            services_of(request), token, _form_str(form, "password"), _form_str(form, "confirm")
        )
    except FormProblem as problem:
        if problem.code == "invalid":
            return render(request, "portal/link-invalid.html.j2", status_code=404, kind="reset")
        return await _reset_page(request, token, 400, problem)
    login = "/staff/login" if kind == "staff" else "/portal/login"
    return RedirectResponse(f"{login}?done=reset", status_code=303)

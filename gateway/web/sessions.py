"""Web sessions, the HTTP side: signed cookies, CSRF tokens, and the principal dependencies.

Who may sign in and how long a session lives are decided by :mod:`gateway.portal.accounts`;
this module only carries the session id between the browser and those functions.

* The cookie carries a random session id signed with ``keyring.subkey("cookie")``; the
  server-side row is looked up by the id's SHA-256 (see :mod:`gateway.portal.accounts`).
* Cookies are HttpOnly, ``SameSite=Lax`` (Strict would drop the cookie when a patient arrives
  from an email link) and ``Secure`` unless ``[web] base_url`` is plain http.
* Patients and staff are separate principals: ``require_patient`` never accepts a staff
  session and ``require_staff(...)`` never a patient one.
* Every POST form carries a CSRF token derived (HMAC) from the session id, or for visitors
  not yet signed in from a signed pre-session nonce cookie: nothing to store, nothing to guess.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from markupsafe import Markup, escape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.portal import accounts
from gateway.portal.accounts import Principal
from gateway.services import Services
from gateway.web.deps import services_of
from gateway.web.limits import COOKIES_STATE, CookieRefused, parse_cookies

SESSION_COOKIE = "cb_session"
PRE_COOKIE = "cb_pre"
LANG_COOKIE = "cb_lang"
CSRF_FIELD = "csrf_token"
_STATE_SID = "cb_sid"
_STATE_PRE = "cb_pre"
_STATE_COOKIES = "cb_set_cookies"
_STATE_PRINCIPAL = "cb_principal"


# -- signing -----------------------------------------------------------------------------


def _mac(services: Services, purpose: str, value: str) -> str:
    digest = hmac.new(
        services.keyring.subkey("cookie"), purpose.encode() + b"\x00" + value.encode(), "sha256"
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(services: Services, purpose: str, value: str) -> str:
    return f"{value}.{_mac(services, purpose, value)}"


def unsign(services: Services, purpose: str, signed: str | None) -> str | None:
    if not signed or "." not in signed or len(signed) > 200:
        return None
    value, _, mac = signed.rpartition(".")
    if not value or not hmac.compare_digest(mac, _mac(services, purpose, value)):
        return None
    return value


def _state(request: Request) -> dict[str, Any]:
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def cookie_header(
    services: Services, name: str, value: str, *, max_age: int | None = None, http_only: bool = True
) -> str:
    parts = [f"{name}={value}", "Path=/", "SameSite=Lax"]
    if http_only:
        parts.append("HttpOnly")
    if not services.config.web.base_url.startswith("http://"):
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def queue_cookie(request: Request, header: str) -> None:
    """Ask :class:`SessionMiddleware` to add a Set-Cookie header to this response."""
    _state(request).setdefault(_STATE_COOKIES, []).append(header)


class SessionMiddleware:
    """Reads and verifies our cookies on the way in; adds queued Set-Cookie on the way out.

    It does not touch the database: the session row is loaded by the dependencies only on
    the routes that need it.
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        cookies = state.get(COOKIES_STATE)
        if cookies is None:
            # Normally parsed (and pathological headers refused) by gateway.web.limits; never
            # through http.cookies, whose unquoting is quadratic (CVE-2024-7592).
            raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie")
            try:
                cookies = parse_cookies(raw.decode("latin-1")) if raw else {}
            except CookieRefused:
                cookies = {}
        state[_STATE_SID] = unsign(self.services, "session", cookies.get(SESSION_COOKIE))
        state[_STATE_PRE] = unsign(self.services, "pre", cookies.get(PRE_COOKIE))
        state[LANG_COOKIE] = cookies.get(LANG_COOKIE)

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"set-cookie", h.encode("latin-1")) for h in state.get(_STATE_COOKIES, [])
                ]
                if extra:
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cookies)


# -- CSRF --------------------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    """The token every form must echo; bound to the session, or to a pre-session nonce."""
    services, state = services_of(request), _state(request)
    sid = state.get(_STATE_SID)
    if sid:
        return _mac(services, "csrf", "s:" + sid)
    pre = state.get(_STATE_PRE)
    if not pre:
        pre = secrets.token_urlsafe(24)
        state[_STATE_PRE] = pre
        queue_cookie(request, cookie_header(services, PRE_COOKIE, sign(services, "pre", pre)))
    return _mac(services, "csrf", "p:" + pre)


def csrf_field(request: Request) -> Markup:
    """A hidden input for templates: ``{{ csrf_field }}`` inside every ``<form method=post>``."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        CSRF_FIELD, escape(csrf_token(request))
    )


def _expected_csrf(request: Request) -> list[str]:
    services, state = services_of(request), _state(request)
    out = []
    if state.get(_STATE_SID):
        out.append(_mac(services, "csrf", "s:" + state[_STATE_SID]))
    if state.get(_STATE_PRE):
        out.append(_mac(services, "csrf", "p:" + state[_STATE_PRE]))
    return out


async def check_csrf(request: Request) -> None:
    """Dependency for every POST route: the form's token must match this browser's cookies."""
    form = await request.form()
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not any(
        hmac.compare_digest(given, want) for want in _expected_csrf(request)
    ):
        raise HTTPException(
            status_code=403, detail="This form has expired. Go back, reload the page and retry."
        )


# -- sessions ----------------------------------------------------------------------------


async def start_session(request: Request, kind: str, principal_id: str) -> None:
    """A fresh session id on every sign-in (no fixation); the old one, if any, is deleted."""
    services, state = services_of(request), _state(request)
    sid = await accounts.open_session(services, kind, principal_id, replacing=state.get(_STATE_SID))
    state[_STATE_SID] = sid
    state.pop(_STATE_PRINCIPAL, None)
    queue_cookie(request, cookie_header(services, SESSION_COOKIE, sign(services, "session", sid)))


async def end_session(request: Request) -> None:
    services, state = services_of(request), _state(request)
    sid = state.get(_STATE_SID)
    if sid:
        await accounts.close_session(services, sid)
    state[_STATE_SID] = None
    state[_STATE_PRINCIPAL] = None
    queue_cookie(request, cookie_header(services, SESSION_COOKIE, "", max_age=0))


async def current_principal(request: Request) -> Principal | None:
    """The signed-in principal, or None; loaded once per request (timeouts are enforced by
    :func:`gateway.portal.accounts.resume_session`)."""
    state = _state(request)
    if _STATE_PRINCIPAL in state:
        cached: Principal | None = state[_STATE_PRINCIPAL]
        return cached
    sid = state.get(_STATE_SID)
    principal = await accounts.resume_session(services_of(request), sid) if sid else None
    state[_STATE_PRINCIPAL] = principal
    return principal


def _safe_next(path: str) -> str:
    return quote(path, safe="/-_") if path.startswith("/") else "/"


async def require_patient(request: Request) -> Principal:
    """Dependency: the signed-in patient, or a redirect to the portal sign-in page."""
    principal = await current_principal(request)
    if principal is None or principal.kind != "patient":
        target = "/portal/login?next=" + _safe_next(request.url.path)
        raise HTTPException(status_code=303, headers={"Location": target})
    return principal


def require_staff(*roles: str) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency factory: ``Depends(require_staff("nurse", "provider"))``; no roles = any staff.

    Not signed in as staff: redirect to ``/staff/login``. Signed in with another role: 403.
    """

    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        if principal is None or principal.kind != "staff":
            target = "/staff/login?next=" + _safe_next(request.url.path)
            raise HTTPException(status_code=303, headers={"Location": target})
        if roles and principal.role not in roles:
            raise HTTPException(status_code=403, detail="Your role does not allow this page.")
        return principal

    return dependency


def safe_next(value: str | None, default: str, prefixes: tuple[str, ...]) -> str:
    """A post-sign-in redirect target: only local paths under our own areas (no open redirect)."""
    if (
        value
        and value.startswith(prefixes)
        and "//" not in value
        and "\\" not in value
        and all(c.isalnum() or c in "/-_" for c in value)
    ):
        return value
    return default

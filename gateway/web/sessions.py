"""Web sessions: signed cookies, server-side rows, CSRF, sign-in with lockout, principals.

* The cookie carries a random session id signed with ``keyring.subkey("cookie")``; the row
  (``web_session``) is looked up by the id's SHA-256, so sign-out and timeouts really end a
  session and a database copy holds no usable session.
* Cookies are HttpOnly, ``SameSite=Lax`` (Strict would drop the cookie when a patient arrives
  from an email link) and ``Secure`` unless ``[web] base_url`` is plain http.
* Patients and staff are separate principals: ``require_patient`` never accepts a staff
  session and ``require_staff(...)`` never a patient one.
* Every POST form carries a CSRF token derived (HMAC) from the session id, or for visitors
  not yet signed in from a signed pre-session nonce cookie: nothing to store, nothing to guess.
* Sign-in counts failures per typed address (a blind index), locks with exponential backoff
  whether or not the account exists, and audits every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pyotp
from fastapi import HTTPException, Request
from markupsafe import Markup, escape
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import audit, throttle
from gateway.addresses import index_form
from gateway.crypto import hash_secret
from gateway.errors import CarebridgeError, InvalidAddressError
from gateway.models import Patient, Staff, WebSession
from gateway.passwords import hash_password, needs_rehash, verify_password
from gateway.services import Services

log = logging.getLogger("carebridge.web.sessions")

SESSION_COOKIE = "cb_session"
PRE_COOKIE = "cb_pre"
LANG_COOKIE = "cb_lang"
CSRF_FIELD = "csrf_token"
_STATE_SID = "cb_sid"
_STATE_PRE = "cb_pre"
_STATE_COOKIES = "cb_set_cookies"
_STATE_PRINCIPAL = "cb_principal"
_TOUCH_EVERY = timedelta(seconds=60)
# A dummy hash so an unknown address costs the same argon2 work as a known one.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class SignInError(CarebridgeError):
    """Sign-in refused. Never says whether an account exists; ``minutes`` is set when locked."""

    def __init__(self, message: str, minutes: int | None = None) -> None:
        super().__init__(message)
        self.minutes = minutes


@dataclass(frozen=True)
class Principal:
    kind: str  # "patient" or "staff"
    id: str
    session_hash: str
    role: str = ""
    clinic_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"


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


def _services(request: Request) -> Services:
    svc = request.app.state.services
    assert isinstance(svc, Services)
    return svc


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
        raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie")
        cookies = cookie_parser(raw.decode("latin-1")) if raw else {}
        state: dict[str, Any] = scope.setdefault("state", {})
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
    services, state = _services(request), _state(request)
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
    services, state = _services(request), _state(request)
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
    services, state = _services(request), _state(request)
    now = services.clock.now()
    sid = secrets.token_urlsafe(32)
    async with services.transaction() as s:
        if state.get(_STATE_SID):
            await s.execute(
                delete(WebSession).where(WebSession.id_hash == hash_secret(state[_STATE_SID]))
            )
        s.add(
            WebSession(
                id_hash=hash_secret(sid),
                principal_kind=kind,
                principal_id=principal_id,
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(hours=services.config.web.session_absolute_hours),
            )
        )
    state[_STATE_SID] = sid
    state.pop(_STATE_PRINCIPAL, None)
    queue_cookie(request, cookie_header(services, SESSION_COOKIE, sign(services, "session", sid)))


async def end_session(request: Request) -> None:
    services, state = _services(request), _state(request)
    sid = state.get(_STATE_SID)
    if sid:
        async with services.transaction() as s:
            row = await s.get(WebSession, hash_secret(sid))
            if row is not None:
                await audit.record(
                    s,
                    f"{row.principal_kind}:{row.principal_id}",
                    "auth.sign_out",
                    row.principal_kind,
                    row.principal_id,
                    at=services.clock.now(),
                )
                await s.delete(row)
    state[_STATE_SID] = None
    state[_STATE_PRINCIPAL] = None
    queue_cookie(request, cookie_header(services, SESSION_COOKIE, "", max_age=0))


async def current_principal(request: Request) -> Principal | None:
    """The signed-in principal, or None. Enforces idle and absolute timeouts."""
    state = _state(request)
    if _STATE_PRINCIPAL in state:
        cached: Principal | None = state[_STATE_PRINCIPAL]
        return cached
    services = _services(request)
    sid = state.get(_STATE_SID)
    principal: Principal | None = None
    if sid:
        now = services.clock.now()
        idle = timedelta(minutes=services.config.web.session_idle_minutes)
        async with services.transaction() as s:
            row = await s.get(WebSession, hash_secret(sid))
            if row is not None and (row.expires_at <= now or row.last_seen_at + idle <= now):
                await s.delete(row)
                row = None
            if row is not None:
                principal = await _load_principal(s, row)
                if principal is None:
                    await s.delete(row)
                elif now - row.last_seen_at >= _TOUCH_EVERY:
                    # Not on every request: one write a minute is enough for an idle timeout
                    # counted in minutes, and spares the store a write per page view.
                    row.last_seen_at = now
    state[_STATE_PRINCIPAL] = principal
    return principal


async def _load_principal(s: AsyncSession, row: WebSession) -> Principal | None:
    if row.principal_kind == "patient":
        patient = await s.get(Patient, row.principal_id)
        if patient is None or patient.status == "disabled":
            return None
        return Principal("patient", patient.id, row.id_hash)
    if row.principal_kind == "staff":
        member = await s.get(Staff, row.principal_id)
        if member is None or not member.active:
            return None
        return Principal("staff", member.id, row.id_hash, member.role, member.clinic_id)
    return None


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


# -- sign-in -----------------------------------------------------------------------------


def _throttle_key(services: Services, email: str) -> str:
    try:
        normal = index_form(email.strip())
    except InvalidAddressError:
        normal = email.strip().lower()
    return services.keyring.blind_index(normal, "signin")


def _minutes(until: datetime, now: datetime) -> int:
    return max(1, int((until - now).total_seconds() + 59) // 60)


LOCKED = "Too many attempts. Try again in %(n)s minutes."
INVALID = "The email address, password or code is not right."


async def authenticate(
    services: Services, kind: str, email: str, password: str, totp_code: str = ""
) -> str:
    """Check credentials for a patient or staff member; return the principal id.

    Raises :class:`SignInError` with a message that is the same for an unknown address and a
    wrong password. Every attempt is audited (ids only).
    """
    now = services.clock.now()
    key = _throttle_key(services, email)
    async with services.transaction() as s:
        until = await throttle.locked_until(s, throttle.SIGN_IN, key, now)
        if until is not None:
            await audit.record(
                s, "anonymous", "auth.sign_in_refused", kind, "", at=now, reason="locked"
            )
            minutes = _minutes(until, now)
        else:
            minutes = 0
    if minutes:
        raise SignInError(LOCKED, minutes)
    # Look up, then verify outside any transaction and off the event loop: argon2 takes tens
    # of milliseconds of CPU, which must neither hold the store's write lock nor stall others.
    async with services.sessions() as s:
        account = await _find_account(s, services, kind, email)
        account_id = account.id if account is not None else None
        stored = account.password_hash if account is not None else ""
        totp_secret = account.totp_secret if account is not None else None
        usable = account is not None and (
            account.status != "disabled" if isinstance(account, Patient) else account.active
        )
    ok = await asyncio.to_thread(verify_password, stored or _DUMMY_HASH, password)
    ok = ok and bool(stored) and usable
    if ok and totp_secret:
        ok = pyotp.TOTP(totp_secret).verify(totp_code.strip(), for_time=now, valid_window=1)
    rehashed = (
        await asyncio.to_thread(hash_password, password) if ok and needs_rehash(stored) else None
    )
    async with services.transaction() as s:
        row: Patient | Staff | None = None
        if account_id is not None:
            row = await s.get(Patient if kind == "patient" else Staff, account_id)
        if ok and row is not None:
            await throttle.reset(s, throttle.SIGN_IN, key)
            row.failed_logins, row.locked_until = 0, None
            if rehashed:
                row.password_hash = rehashed
            await audit.record(s, f"{kind}:{row.id}", "auth.sign_in", kind, row.id, at=now)
            log.info("sign-in %s %s", kind, row.id)
            return row.id
        until = await throttle.hit(s, throttle.SIGN_IN, key, now)
        if row is not None:
            row.failed_logins += 1
            row.locked_until = until
        await audit.record(
            s, "anonymous", "auth.sign_in_failed", kind, row.id if row is not None else "", at=now
        )
    log.info("sign-in failed (%s)", kind)
    if until is not None:
        raise SignInError(LOCKED, _minutes(until, now))
    raise SignInError(INVALID)


async def _find_account(
    s: AsyncSession, services: Services, kind: str, email: str
) -> Patient | Staff | None:
    try:
        normal = index_form(email.strip())
    except InvalidAddressError:
        return None
    if kind == "staff":
        idx = services.keyring.blind_index(normal, "staff-email")
        return await s.scalar(select(Staff).where(Staff.email_index == idx))
    idx = services.keyring.blind_index(normal, "patient-email")
    # One address may belong to accounts in several organisations: the one with a password
    # set most recently wins (accounts still pending have no password and cannot sign in).
    rows = (
        await s.scalars(
            select(Patient)
            .where(Patient.email_index == idx, Patient.password_hash != "")
            .order_by(Patient.created_at.desc())
        )
    ).all()
    return rows[0] if rows else None


async def purge_expired(session: AsyncSession, services: Services) -> int:
    """Delete sessions past their absolute or idle timeout (for the scheduler's retention job).

    Expired sessions are already refused when presented; this only keeps the table small.
    """
    now = services.clock.now()
    idle = timedelta(minutes=services.config.web.session_idle_minutes)
    result = await session.execute(
        delete(WebSession)
        .where((WebSession.expires_at <= now) | (WebSession.last_seen_at <= now - idle))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)

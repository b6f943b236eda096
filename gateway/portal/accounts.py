"""Accounts: sign-in with lockout, and the life of a signed-in session, for patients and staff.

Patients and staff sign in the same way (password, then a TOTP code when one is set up), so
this one module serves both; the web layer (:mod:`gateway.web.sessions`) only carries the
session id in a signed cookie and calls these functions.

* Sign-in counts failures per typed address and per client address (blind indexes), locks
  with exponential backoff whether or not the account exists, and audits every attempt. The
  refusal never says whether an account exists.
* A TOTP code is accepted once: the time step it belongs to is stored, and a code of that
  step or an earlier one is refused afterwards.
* A session is a ``web_session`` row found by the SHA-256 of its random id, so sign-out and
  timeouts really end it and a database copy holds no usable session. It ends at an absolute
  timeout and after an idle one; patients and staff are separate principals.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit, throttle
from gateway.addresses import index_form
from gateway.crypto import hash_secret
from gateway.errors import CarebridgeError, InvalidAddressError
from gateway.models import Patient, Staff, WebSession
from gateway.passwords import hash_password, needs_rehash, verify_password
from gateway.services import Services

# The channel keeps its name from before sign-in moved out of the web layer, so log filters
# that operators already have still match.
log = logging.getLogger("carebridge.web.sessions")

_TOUCH_EVERY = timedelta(seconds=60)
# A dummy hash so an unknown address costs the same argon2 work as a known one.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))

LOCKED = "Too many attempts. Try again in %(n)s minutes."
INVALID = "The email address, password or code is not right."


class SignInError(CarebridgeError):
    """Sign-in refused. Never says whether an account exists; ``minutes`` is set when locked."""

    def __init__(self, message: str, minutes: int | None = None) -> None:
        super().__init__(message)
        self.minutes = minutes


@dataclass(frozen=True)
class Principal:
    """Who a live session belongs to."""

    kind: str  # "patient" or "staff"
    id: str
    session_hash: str
    role: str = ""
    clinic_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"


# -- sign-in -----------------------------------------------------------------------------


def _throttle_key(services: Services, email: str) -> str:
    try:
        normal = index_form(email.strip())
    except InvalidAddressError:
        normal = email.strip().lower()
    return services.keyring.blind_index(normal, "signin")


def _minutes(until: datetime, now: datetime) -> int:
    return max(1, int((until - now).total_seconds() + 59) // 60)


def _totp_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step ``code`` belongs to (now, or one step either side), if not yet used."""
    code = code.strip()
    if not code.isdigit() or len(code) > 10:
        return None
    try:
        totp = pyotp.TOTP(secret)
        current = totp.timecode(now)
        for step in (current - 1, current, current + 1):
            if last_step is not None and step <= last_step:
                continue
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
    except (ValueError, TypeError):  # a tampered secret that is not base32
        return None
    return None


async def authenticate(
    services: Services,
    kind: str,
    email: str,
    password: str,
    totp_code: str = "",
    *,
    client: str = "",
) -> str:
    """Check credentials for a patient or staff member; return the principal id.

    ``client`` is the client's address as the web front end reports it: failures are also
    counted per address. Raises :class:`SignInError` with a message that is the same for an
    unknown address and a wrong password. Every attempt is audited (ids only).
    """
    now = services.clock.now()
    key = _throttle_key(services, email)
    client_key = services.keyring.blind_index(client, "signin-client") if client else ""
    async with services.transaction() as s:
        until = await throttle.locked_until(s, throttle.SIGN_IN, key, now)
        if until is None and client_key:
            until = await throttle.locked_until(s, throttle.SIGN_IN_CLIENT, client_key, now)
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
        last_step = account.totp_last_step if account is not None else None
        usable = account is not None and (
            account.status != "disabled" if isinstance(account, Patient) else account.active
        )
    ok = await services.executors.passwords.run(verify_password, stored or _DUMMY_HASH, password)
    ok = ok and bool(stored) and usable
    step = None
    if ok and totp_secret:
        step = _totp_step(totp_secret, totp_code, now, last_step)
        ok = step is not None
    rehashed = (
        await services.executors.passwords.run(hash_password, password)
        if ok and needs_rehash(stored)
        else None
    )
    async with services.transaction() as s:
        row: Patient | Staff | None = None
        if account_id is not None:
            # Locked, so two sign-ins racing with the same code cannot both use its step.
            row = await s.get(
                Patient if kind == "patient" else Staff, account_id, with_for_update=True
            )
        if ok and row is not None and step is not None:
            if row.totp_last_step is not None and step <= row.totp_last_step:
                ok = False
            else:
                row.totp_last_step = step
        if ok and row is not None:
            await throttle.reset(s, throttle.SIGN_IN, key)
            row.failed_logins, row.locked_until = 0, None
            if rehashed:
                row.password_hash = rehashed
            await audit.record(s, f"{kind}:{row.id}", "auth.sign_in", kind, row.id, at=now)
            log.info("sign-in %s %s", kind, row.id)
            return row.id
        until = await throttle.hit(s, throttle.SIGN_IN, key, now)
        if client_key:
            client_until = await throttle.hit(s, throttle.SIGN_IN_CLIENT, client_key, now)
            if client_until is not None and (until is None or client_until > until):
                until = client_until
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


# -- sessions ----------------------------------------------------------------------------


async def open_session(
    services: Services, kind: str, principal_id: str, *, replacing: str | None = None
) -> str:
    """Store a new session for a principal who just signed in; return its random id.

    A fresh id on every sign-in (no fixation): the session being ``replacing``, if any, is
    deleted in the same transaction.
    """
    now = services.clock.now()
    sid = secrets.token_urlsafe(32)
    async with services.transaction() as s:
        if replacing:
            await s.execute(delete(WebSession).where(WebSession.id_hash == hash_secret(replacing)))
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
    return sid


async def close_session(services: Services, sid: str) -> None:
    """Sign out: the session row is deleted and the sign-out audited."""
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


async def resume_session(services: Services, sid: str) -> Principal | None:
    """The principal of a live session, or None. Enforces idle and absolute timeouts.

    A session past either timeout, or whose account is gone or disabled, is deleted.
    """
    now = services.clock.now()
    idle = timedelta(minutes=services.config.web.session_idle_minutes)
    principal: Principal | None = None
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

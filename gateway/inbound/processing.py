"""Step 2 of the intake path: authenticate, route, handle, and record the outcome.

Work that needs no lock (parsing in the parse pool's processes; DKIM, SPF and DNS in the auth
pool) is done first for a whole batch
of stored messages; then every outcome is applied in ONE transaction, each handler inside its
own savepoint, so a batch costs one commit and a failing handler leaves nothing half-written.
This module is the single place where handler outcomes become message state, quarantine rows,
metrics and audit events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.addresses import index_form
from gateway.errors import InvalidAddressError
from gateway.inbound import auth, parsing, quarantine, routing
from gateway.inbound.auth import AuthVerdict, ReceivedEnvelope
from gateway.inbound.handling import (
    BounceRecorded,
    Confirmed,
    Context,
    Filed,
    Handler,
    Ignore,
    Keep,
    Outcome,
    Quarantine,
    Route,
    RoutingTable,
)
from gateway.inbound.parsing import MalformedMessage, ParsedMail, Sender
from gateway.models import Clinic, InboundMessage, QuarantineItem, Token
from gateway.services import Services

log = logging.getLogger("carebridge.inbound")

# PHI-free details for the quarantine rows of messages that could not be parsed.
_REASONS = {
    "parse_timeout": "parsing took longer than [inbound] parse_timeout_seconds; worker stopped",
    "unparsable": "the message could not be parsed",
    "header_too_large": "the header block is over [inbound] max_header_bytes",
}
MAX_ATTEMPTS = 3  # a message whose handler keeps failing is quarantined, not retried forever


def state_of(outcome: Outcome) -> str:
    match outcome:
        case Filed():
            return "filed"
        case Confirmed():
            return "confirmed"
        case BounceRecorded():
            return "bounce"
        case Quarantine():
            return "quarantined"
        case Ignore():
            return "ignored"
        case Keep():
            return "kept"
    raise AssertionError(outcome)


def _detail_of(outcome: Outcome) -> str:
    match outcome:
        case Quarantine(reason=r) | Ignore(reason=r) | Keep(reason=r):
            return r
        case BounceRecorded(severity=sev, status=st):
            return f"{sev} {st}".strip()
        case Confirmed(terms_agreed=agreed):
            return "email+terms" if agreed else "email"
        case Filed():
            return ""
    raise AssertionError(outcome)


@dataclass
class Prepared:
    """Everything learnt about one stored message before taking any lock."""

    inbound_id: str
    envelope: ReceivedEnvelope
    fixed: Outcome | None = None  # decided already (unparsable, no recipient of ours)
    handler: Handler | None = None
    route: Route | None = None
    automated: str | None = None
    mail: ParsedMail | None = None
    sender: Sender | None = None
    verdict: AuthVerdict | None = None


async def prepare(
    services: Services,
    routing_table: RoutingTable,
    inbound_id: str,
    raw: bytes,
    source: str,
    route_name: str,
    env: ReceivedEnvelope,
) -> Prepared:
    cfg = services.config
    executors = services.executors
    route = routing_table.named(route_name)
    try:
        mail = await parsing.parse(
            executors.parse,
            raw,
            max_header_bytes=cfg.inbound.max_header_bytes,
            deadline=cfg.inbound.parse_timeout_seconds,
            extract=route.extract if route is not None else None,
        )
    except MalformedMessage as exc:
        return Prepared(inbound_id, env, fixed=Quarantine(exc.reason, _REASONS.get(exc.reason, "")))
    sender = mail.sender
    verdict = await auth.authenticate(
        cfg,
        executors.auth,
        raw,
        sender.domain if sender else "",
        env,
    )
    handler, automated = routing.choose_handler(routing_table, route, mail, env, source)
    fixed = None if handler else Quarantine("no_recipient", "no address of ours in the message")
    return Prepared(inbound_id, env, fixed, handler, route, automated, mail, sender, verdict)


def _sender_index(services: Services, p: Prepared) -> str | None:
    address = p.sender.address if p.sender else p.envelope.mail_from
    if not address:
        return None
    try:
        return services.keyring.blind_index(index_form(address), "inbound-sender")
    except InvalidAddressError:
        return None


async def apply_one(
    services: Services,
    routing_table: RoutingTable,
    session: AsyncSession,
    p: Prepared,
    now: datetime,
) -> tuple[Outcome | None, bool]:
    """Handle one prepared message in the caller's transaction: (outcome, retry_later)."""
    row = await session.get(InboundMessage, p.inbound_id, with_for_update=True)
    if row is None or row.state != "received":
        return None, False  # another worker or node got there first
    row.sender_index = _sender_index(services, p)
    if p.verdict is not None:
        row.auth = p.verdict.to_json()
    outcome = p.fixed
    if outcome is None:
        assert p.handler is not None and p.mail is not None and p.verdict is not None
        token = await session.get(Token, row.token_id) if row.token_id else None
        if token is not None and token.expires_at <= now:
            token = None
        clinic = await session.get(Clinic, row.clinic_id) if row.clinic_id else None
        handler = p.handler
        if p.route is not None and p.automated is None and token is not None:
            # RCPT already picked the route for the token's subject (staff or patient reply);
            # a message stored under a sibling route before that split is settled here.
            handler = routing_table.for_subject(p.route, token.subject_kind).handler
        ctx = Context(
            services=services,
            session=session,
            inbound=row,
            mail=p.mail,
            sender=p.sender,
            verdict=p.verdict,
            envelope=p.envelope,
            token=token,
            clinic=clinic,
            now=now,
            automated=p.automated,
        )
        row.handler = handler.name
        try:
            async with session.begin_nested():
                outcome = await handler.handle(ctx)
        except Exception as exc:
            # The exception text may quote the message: log its type only.
            log.error("inbound %s: handler %s raised %s", row.id, handler.name, type(exc).__name__)
            await session.refresh(row)
            row.attempts = (row.attempts or 0) + 1
            if row.attempts < MAX_ATTEMPTS:
                return None, True
            outcome = Quarantine("processing_error", f"{handler.name} raised {type(exc).__name__}")
    await record_outcome(session, row, outcome, now)
    await quarantine.tell_patient(services, session, row, outcome, now)  # nobody in silence
    return outcome, False


async def record_outcome(
    session: AsyncSession, row: InboundMessage, outcome: Outcome, now: datetime
) -> None:
    """State, quarantine row and audit event for one outcome (metrics after the commit)."""
    row.state = state_of(outcome)
    row.detail = _detail_of(outcome)[:200]
    row.processed_at = now
    details: dict[str, object] = {"state": row.state, "route": row.route}
    if isinstance(outcome, Filed):
        row.thread_id = outcome.thread_id
        details.update(thread_id=outcome.thread_id, message_id=outcome.message_id)
    elif isinstance(outcome, Quarantine):
        item = QuarantineItem(
            inbound_id=row.id,
            reason=outcome.reason,
            detail=outcome.detail[:500] or None,
            state="held",
            created_at=now,
        )
        session.add(item)
        await session.flush()
        details.update(reason=outcome.reason, quarantine_id=item.id)
    elif isinstance(outcome, Ignore):
        details.update(reason=outcome.reason)
        if outcome.drop_raw:
            row.raw = b""
    elif isinstance(outcome, BounceRecorded):
        details.update(notification_id=outcome.notification_id, severity=outcome.severity)
    elif isinstance(outcome, Confirmed):
        details.update(patient_id=outcome.patient_id)
    await audit.record(
        session, "system", f"inbound.{row.state}", "inbound", row.id, at=now, **details
    )

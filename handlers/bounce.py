"""``bounce+TOKEN@``: a delivery failure report for one notification (VERP).

The token names the notification, but a token is no proof: anyone who saw the envelope
sender (a mail log) can write to ``bounce+TOKEN@``. So a report counts only when it matches:
the notification was sent, and the report's recipient (``Final-Recipient`` /
``Original-Recipient``, or flufl.bounce's scan of other formats) is the notification's, or the
original message it quotes has the notification's Message-ID. Anything else is quarantined as
``bounce_unmatched``: no deliverability change, no staff email. flufl.bounce decides
permanent versus temporary for RFC 3464 DSNs and for the many non-standard formats; the
enhanced status code then separates policy refusals (X.7.X: spam filters, blocked sender)
from hard failures (no such mailbox). The patient's address gets a deliverability state, the
notification is marked, and a hard bounce asks the clinic's pool staff to contact the patient
another way (a PHI-free notice).
Nothing is ever sent back to the reporting server.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import HeaderParser

from flufl.bounce import all_failures
from sqlalchemy import select

from gateway import audit
from gateway.inbound.handling import BounceRecorded, Context, Ignore, Outcome, Quarantine
from gateway.models import Notification, Patient, Pool, PoolMember, Staff
from gateway.outbound.notify import Kind, Notice, enqueue

log = logging.getLogger("carebridge.inbound.bounce")

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# Worse states are never overwritten by milder ones (a soft bounce after a hard one).
_RANK = {"ok": 0, "soft": 1, "policy": 2, "hard": 3}
# A notification nobody tried to deliver cannot have bounced.
_NEVER_SENT = ("queued", "cancelled")
_MAX_VALUE = 1000  # per reported address or quoted header block read
_MAX_QUOTED = 64 * 1024


def dsn_statuses(msg: Message) -> list[str]:
    """Every per-recipient ``Status:`` of an RFC 3464 report, e.g. ['5.1.1']."""
    out: list[str] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for block in blocks:
            if not isinstance(block, Message):
                continue
            m = _STATUS.search(str(block.get("Status", "")))
            if m:
                out.append(m.group(0))
    return out


def text_status(msg: Message) -> str:
    """The first enhanced status code in a non-standard bounce's text, or ''."""
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)  # stdlib decodes leniently, never raises
        if isinstance(payload, bytes):
            m = _STATUS.search(payload.decode("utf-8", "replace"))
            if m:
                return m.group(0)
    return ""


def reported_recipients(msg: Message, scanned: set[bytes]) -> set[str]:
    """Every recipient the report names (lower-case): the RFC 3464 ``Final-Recipient`` and
    ``Original-Recipient`` fields, and the addresses flufl.bounce found in other formats."""
    out = {a.decode("utf-8", "replace").strip().strip("<>").lower() for a in scanned}
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        for block in payload if isinstance(payload, list) else []:
            if not isinstance(block, Message):
                continue
            for name in ("Final-Recipient", "Original-Recipient"):
                value = str(block.get(name, ""))[:_MAX_VALUE]
                _type, _, address = value.partition(";")
                if address.strip():
                    out.add(address.strip().strip("<>").lower())
    out.discard("")
    return out


def quoted_message_ids(msg: Message) -> set[str]:
    """The Message-ID of the original message the report quotes (message/rfc822 or
    text/rfc822-headers)."""
    out: set[str] = set()
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            for inner in payload if isinstance(payload, list) else []:
                if isinstance(inner, Message) and inner.get("Message-ID"):
                    out.add(str(inner.get("Message-ID"))[:_MAX_VALUE].strip())
        elif ctype == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                text = raw[:_MAX_QUOTED].decode("utf-8", "replace")
                quoted = HeaderParser(policy=policy.compat32).parsestr(text, headersonly=True)
                if quoted.get("Message-ID"):
                    out.add(str(quoted.get("Message-ID"))[:_MAX_VALUE].strip())
    out.discard("")
    return out


def matches(notification: Notification, report: Report) -> bool:
    """Does this report speak of this notification's delivery?"""
    if notification.state in _NEVER_SENT and notification.sent_at is None:
        return False
    if notification.recipient.strip().lower() in report.recipients:
        return True
    return bool(notification.message_id) and notification.message_id in report.message_ids


@dataclass(frozen=True)
class Report:
    """What a delivery report says, read in the parse pool: plain values, picklable."""

    severity: str  # hard, soft, policy
    status: str  # enhanced status code, '' when the report gave none
    recipients: frozenset[str]
    message_ids: frozenset[str]


def classify(msg: EmailMessage) -> Report | None:
    """The report, or None when it is no bounce (e.g. an out-of-office answer).

    The route's ``extract`` function: it runs in the parse pool, within the parse deadline."""
    temporary, permanent = (set(f) for f in all_failures(msg))
    statuses = dsn_statuses(msg)
    status = next((s for s in statuses if s.startswith("5")), "") or (
        statuses[0] if statuses else text_status(msg)
    )
    if permanent:
        # X.7.X is "security or policy status": refused by a filter, not a dead mailbox.
        severity = "policy" if status.split(".")[1:2] == ["7"] else "hard"
    elif temporary:
        severity = "soft"
    else:
        return None
    return Report(
        severity,
        status,
        frozenset(reported_recipients(msg, temporary | permanent)),
        frozenset(quoted_message_ids(msg)),
    )


async def _pool_staff(ctx: Context, clinic_id: str) -> list[Staff]:
    # A subquery, not DISTINCT: PostgreSQL cannot compare the JSON column for DISTINCT.
    in_pools = (
        select(PoolMember.staff_id)
        .join(Pool, Pool.id == PoolMember.pool_id)
        .where(Pool.clinic_id == clinic_id)
    )
    members = (
        await ctx.session.scalars(
            select(Staff).where(Staff.id.in_(in_pools), Staff.active.is_(True))
        )
    ).all()
    if members:
        return list(members)
    # No pools staffed yet: the clinic's own care team and desk still need to know.
    return list(
        (
            await ctx.session.scalars(
                select(Staff).where(
                    Staff.clinic_id == clinic_id,
                    Staff.active.is_(True),
                    Staff.role.in_(("nurse", "front_desk", "clinic_admin")),
                )
            )
        ).all()
    )


async def _ask_staff_to_contact(ctx: Context, notification: Notification) -> int:
    staff = await _pool_staff(ctx, notification.clinic_id)
    for member in staff:
        await enqueue(
            ctx.session,
            ctx.services.keyring,
            notice=Notice(kind=Kind.CONTACT_PATIENT),
            clinic_id=notification.clinic_id,
            recipient=member.email,
            now=ctx.now,
            staff_id=member.id,
            coalesce_key=f"contact_patient:{member.id}",
        )
    return len(staff)


class BounceHandler:
    name = "bounce"

    async def handle(self, ctx: Context) -> Outcome:
        token = ctx.token
        if token is None or token.purpose != "bounce_address":
            return Quarantine("token_expired", "the bounce address token is no longer live")
        if token.subject_kind != "notification":
            return Quarantine("token_invalid", "the bounce token does not name a notification")
        notification = await ctx.session.get(Notification, token.subject_id)
        if notification is None:
            return Quarantine("token_invalid", "the bounce token's notification is gone")
        # Read in the parse pool (the route's ``extract``): flufl.bounce walks every MIME part,
        # which must stay within the parse deadline and off the event loop.
        report = ctx.mail.extracted
        verdict = (report.severity, report.status) if isinstance(report, Report) else None
        if verdict is None:
            # Often an out-of-office answer sent to the envelope sender: nothing to do.
            return Ignore("not_a_bounce")
        assert isinstance(report, Report)
        if not matches(notification, report):
            log.info("bounce notification=%s unmatched: quarantined", notification.id)
            return Quarantine("bounce_unmatched", "the report names another recipient or message")
        severity, status = verdict
        notification.last_error = f"bounce {severity} {status}".strip()
        if severity in ("hard", "policy") and notification.state != "bounced":
            notification.state = "bounced"
        patient = (
            await ctx.session.get(Patient, notification.patient_id)
            if notification.patient_id
            else None
        )
        if patient is not None and _RANK[severity] >= _RANK.get(patient.deliverability, 0):
            patient.deliverability = severity
        asked = 0
        if severity == "hard" and patient is not None:
            asked = await _ask_staff_to_contact(ctx, notification)
            await audit.record(
                ctx.session,
                "system",
                "patient.contact_needed",
                "patient",
                patient.id,
                at=ctx.now,
                notification_id=notification.id,
                staff_notified=asked,
            )
        log.info(
            "bounce notification=%s severity=%s status=%s staff_notified=%d",
            notification.id,
            severity,
            status or "-",
            asked,
        )
        return BounceRecorded(notification.id, severity, status)


handler = BounceHandler()

"""``bounce+TOKEN@``: a delivery failure report for one notification (VERP).

The token names the notification, so the bounce is traced without trusting anything the
report says about addresses. flufl.bounce decides permanent versus temporary for RFC 3464 DSNs
and for the many non-standard formats; the enhanced status code then separates policy
refusals (X.7.X: spam filters, blocked sender) from hard failures (no such mailbox). The
patient's address gets a deliverability state, the notification is marked, and a hard bounce
asks the clinic's pool staff to contact the patient another way (a PHI-free notice).
Nothing is ever sent back to the reporting server.
"""

from __future__ import annotations

import logging
import re
from email.message import EmailMessage, Message

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


def classify(msg: EmailMessage) -> tuple[str, str] | None:
    """(severity, status) with severity hard/soft/policy, or None when it is no bounce."""
    temporary, permanent = all_failures(msg)
    statuses = dsn_statuses(msg)
    status = next((s for s in statuses if s.startswith("5")), "") or (
        statuses[0] if statuses else text_status(msg)
    )
    if permanent:
        # X.7.X is "security or policy status": refused by a filter, not a dead mailbox.
        return ("policy" if status.split(".")[1:2] == ["7"] else "hard"), status
    if temporary:
        return "soft", status
    return None


def _verdict(extracted: object) -> tuple[str, str] | None:
    if isinstance(extracted, tuple) and len(extracted) == 2:
        return str(extracted[0]), str(extracted[1])
    return None


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
        # Classified in the parse pool (the route's ``extract``): flufl.bounce walks every
        # MIME part, which must stay within the parse deadline and off the event loop.
        verdict = _verdict(ctx.mail.extracted)
        if verdict is None:
            # Often an out-of-office answer sent to the envelope sender: nothing to do.
            return Ignore("not_a_bounce")
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

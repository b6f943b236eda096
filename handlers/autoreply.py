"""Automatic replies (RFC 3834 and the non-standard markers): never answered, never filed.

Out-of-office answers, vacation notices, list mail and null-sender mail sent to a patient
address are recognised before any patient handler runs. They are kept (encrypted) for a day's
worth of evidence, at most ``[inbound] max_automated_per_day`` per sender; beyond that even
the raw message is dropped, so a looping responder cannot fill the store.
"""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage

from sqlalchemy import func, select

from gateway.inbound.auth import Envelope
from gateway.inbound.parsing import header_text
from gateway.models import InboundMessage
from handlers.base import Context, Ignore, Outcome

_OOO_SUBJECT = re.compile(
    r"(out of (the )?office|auto(matic)?[- ]?(reply|response|antwort)|autoreply|"
    r"vacation|away from (my|the) (desk|office)|abwesenheit|fuera de la oficina|"
    r"respuesta autom[aá]tica|r[ée]ponse automatique|absence)",
    re.I,
)
_BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}


def automated_reason(msg: EmailMessage, envelope: Envelope, source: str) -> str | None:
    """Why this message is automatic (a short code), or None when a person wrote it."""
    auto = header_text(msg, "Auto-Submitted").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "auto_submitted"
    if header_text(msg, "Precedence").strip().lower() in _BULK_PRECEDENCE:
        return "precedence"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Response-Suppress"):
        if msg.get(name) is not None:
            return "x_autoreply"
    if _OOO_SUBJECT.search(header_text(msg, "Subject")):
        return "ooo_subject"
    if source == "smtp" and envelope.mail_from == "":
        return "null_sender"
    if header_text(msg, "Return-Path").strip() == "<>":
        return "null_sender"
    return None


class AutoReplyHandler:
    name = "autoreply"

    async def handle(self, ctx: Context) -> Outcome:
        reason = ctx.automated or "automated"
        limit = ctx.services.config.inbound.max_automated_per_day
        index = ctx.inbound.sender_index
        if index:
            since = ctx.now - timedelta(days=1)
            seen = await ctx.session.scalar(
                select(func.count())
                .select_from(InboundMessage)
                .where(
                    InboundMessage.sender_index == index,
                    InboundMessage.handler == self.name,
                    InboundMessage.state == "ignored",
                    InboundMessage.received_at >= since,
                    InboundMessage.id != ctx.inbound.id,
                )
            )
            if (seen or 0) >= limit:
                return Ignore(f"{reason}_over_daily_cap", drop_raw=True)
        return Ignore(reason)


handler = AutoReplyHandler()

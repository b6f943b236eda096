"""Automatic replies (RFC 3834 and the non-standard markers): never answered, never filed.

Out-of-office answers, vacation notices, list mail and null-sender mail sent to a patient
address are recognised by the intake (:func:`gateway.inbound.parsing.automated_reason`)
before any patient handler runs, and handed here. They are kept (encrypted) for a day's worth
of evidence, at most ``[inbound] max_automated_per_day`` per sender; beyond that even the raw
message is dropped, so a looping responder cannot fill the store.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from gateway.inbound.handling import Context, Ignore, Outcome
from gateway.models import InboundMessage


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

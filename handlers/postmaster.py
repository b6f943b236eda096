"""``postmaster@`` and ``abuse@``: kept, encrypted, for operators to read. Never answered."""

from __future__ import annotations

from gateway.inbound.handling import Context, Keep, Outcome


class PostmasterHandler:
    name = "postmaster"

    async def handle(self, ctx: Context) -> Outcome:
        return Keep(ctx.inbound.route or "postmaster")


handler = PostmasterHandler()

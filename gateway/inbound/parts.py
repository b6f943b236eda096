"""The inbound parts of ``carebridge serve``: SMTP intake and one IMAP poller per mailbox.

They share one :class:`Intake`, so stored-but-unprocessed messages are recovered once and
processing concurrency is bounded across both doors. The routing table comes from the
composition root (``gateway/serve.py``), which loads the installed handlers.
"""

from __future__ import annotations

from gateway.inbound.handling import RoutingTable
from gateway.inbound.intake import Intake
from gateway.services import Part, Services


def inbound_parts(services: Services, routing: RoutingTable) -> list[Part]:
    cfg = services.config
    intake = Intake(services, routing)
    parts: list[Part] = []
    if cfg.smtp.enabled:
        from gateway.inbound.smtp import SmtpPart

        parts.append(SmtpPart(services, intake))
    for name in sorted(cfg.imap):
        from gateway.inbound.imap import ImapPart

        parts.append(ImapPart(services, intake, name))
    return parts

"""The inbound parts of ``carebridge serve``: SMTP intake and one IMAP poller per mailbox.

They share one :class:`Intake`, so stored-but-unprocessed messages are recovered once and
processing concurrency is bounded across both doors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.inbound.intake import Intake
from gateway.services import Services

if TYPE_CHECKING:
    from gateway.serve import Part


def inbound_parts(services: Services) -> list[Part]:
    cfg = services.config
    intake = Intake(services)
    parts: list[Part] = []
    if cfg.smtp.enabled:
        from gateway.inbound.smtp import SmtpPart

        parts.append(SmtpPart(services, intake))
    for name in sorted(cfg.imap):
        from gateway.inbound.imap import ImapPart

        parts.append(ImapPart(services, intake, name))
    return parts

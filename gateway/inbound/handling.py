"""The contract between the intake and the handler plugins: what a handler sees and returns.

A handler is one small object with a ``name`` and one async method, :meth:`Handler.handle`,
returning a small typed outcome. Handlers never commit, never send mail and never write
quarantine rows: the intake turns the outcome into the message's state, a quarantine row,
metrics and audit events, in one place (``gateway/inbound/processing.py``).

Which handler gets which address is a :class:`RoutingTable`: plain data, built by the handler
package (``handlers/``) and handed to the intake by the composition root, so the gateway never
names a handler. See ``gateway/inbound/plugins.py`` for how the installed table is found.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.inbound.auth import AuthVerdict, ReceivedEnvelope
from gateway.inbound.parsing import ParsedMail, Sender
from gateway.models import Clinic, InboundMessage, Token
from gateway.services import Services

# A route's pattern names the address token with this group; the intake looks the token up.
TOKEN = r"(?P<token>[A-Za-z0-9_-]{20,64})"  # noqa: S105 (a pattern, not a secret)


@dataclass
class Context:
    services: Services
    session: AsyncSession
    inbound: InboundMessage
    # The message's headers and text as plain values, read in the bounded parse.
    mail: ParsedMail
    sender: Sender | None
    verdict: AuthVerdict
    envelope: ReceivedEnvelope
    # The live token named by the recipient address (None when expired since RCPT time).
    token: Token | None
    clinic: Clinic | None
    now: datetime
    # Set by the intake when the message is an automatic reply, with the reason.
    automated: str | None = None


@dataclass(frozen=True)
class Filed:
    """The sender's words were stored in a thread."""

    thread_id: str
    message_id: str


@dataclass(frozen=True)
class Confirmed:
    """A registration reply confirmed the address (and perhaps agreed to the terms)."""

    patient_id: str
    terms_agreed: bool


@dataclass(frozen=True)
class BounceRecorded:
    notification_id: str
    severity: str  # hard, soft, policy
    status: str  # enhanced status code, e.g. 5.1.1 ('' when the bounce gave none)


@dataclass(frozen=True)
class Quarantine:
    """May not enter a thread: held for an operator with a PHI-free reason code."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Ignore:
    """Nothing to do (automatic replies): never answered, never filed."""

    reason: str
    drop_raw: bool = False  # over the daily cap: not even kept


@dataclass(frozen=True)
class Keep:
    """Kept for operators (postmaster@, abuse@)."""

    reason: str


Outcome = Filed | Confirmed | BounceRecorded | Quarantine | Ignore | Keep


class Handler(Protocol):
    name: str

    async def handle(self, ctx: Context) -> Outcome: ...


@dataclass(frozen=True)
class Route:
    """One row of the table: a local-part pattern on a clinic's reply domain and its handler."""

    name: str  # stored with the message (``inbound_message.route``)
    pattern: re.Pattern[str]  # matched against the local part; names its token with TOKEN
    token_purpose: str | None  # None: an address without a token (postmaster@)
    handler: Handler
    # Routes carrying a person's words: an automatic reply sent here goes to the
    # table's ``automated`` handler instead.
    screen_automated: bool = False
    # Several routes may share one address shape and token purpose; each then takes the
    # tokens naming one kind of subject ("staff"), None taking any kind.
    subject_kind: str | None = None
    # Reads what this route's handler needs from the parsed message beyond ParsedMail's
    # fields (a bounce's classification). Runs in the parse pool's worker process, within
    # the parse deadline; its result is ``ParsedMail.extracted``. A module-level function.
    extract: Callable[[EmailMessage], object] | None = None


@dataclass(frozen=True)
class RoutingTable:
    """The ordered routes (first match wins) and the handler for automatic replies."""

    routes: tuple[Route, ...]
    automated: Handler

    def match(self, local: str) -> tuple[Route, str | None] | None:
        """The first route whose pattern matches ``local``, and the token it names."""
        for route in self.routes:
            m = route.pattern.match(local)
            if m:
                return route, m.groupdict().get("token")
        return None

    def for_subject(self, route: Route, subject_kind: str) -> Route:
        """The route at ``route``'s address shape that takes a token of ``subject_kind``:
        the first with the same pattern and purpose whose ``subject_kind`` fits."""
        for r in self.routes:
            if (
                r.pattern == route.pattern
                and r.token_purpose == route.token_purpose
                and r.subject_kind in (None, subject_kind)
            ):
                return r
        return route

    def named(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

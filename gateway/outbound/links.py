"""Tokens minted at render time for one email: its links, its Reply-To and its VERP sender.

Tokens are never stored in clear (only their hashes, by :mod:`gateway.tokens`), so they are
created when the email is built, once per delivery attempt. Every message gets its own
``bounce+TOKEN@<reply-domain>`` envelope sender (purpose ``bounce_address``, subject the
notification), so any bounce traces back to exactly one message.

Link paths (served by the portal and by :mod:`gateway.web.unsubscribe`): ``/r/<token>``
registration, ``/t/<token>`` view a thread (or the inbox) after sign-in, ``/reset/<token>``,
``/u/<token>`` unsubscribe. A link only leads to a page; nothing acts until the person POSTs.

One token per purpose and channel: where an email offers a link and a reply address for the
same thing (the registration link and ``register+``; the thread link and ``reply+``), each
gets its own token, the two sharing a ``pair_id``. Someone who sees only the Reply-To (a
forwarded email, a mail log) holds nothing that opens the link. Every token carries the
clinic, so an address token works only at that clinic's reply domain.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import tokens
from gateway.config import Config
from gateway.crypto import hash_secret
from gateway.models import Clinic, Notification, Token
from gateway.models.security import TOKEN_PURPOSES
from gateway.models.types import new_id
from gateway.outbound.notify import OPTIONAL_KINDS, Kind

# Patient kinds about a conversation: the link opens it and a reply by email is filed in it.
THREAD_KINDS = frozenset(
    {Kind.NEW_MESSAGE, Kind.REQUEST_RECEIVED, Kind.REPLY_ACKNOWLEDGED, Kind.SLA_BREACH_PATIENT}
)
# Where a thread-less patient link should land after sign-in (the portal reads data["view"]).
VIEWS = {Kind.NEW_RESULT: "results", Kind.APPOINTMENT_REMINDER: "appointments"}


@dataclass(frozen=True)
class Addressing:
    link: str
    mail_from: str  # bounce+TOKEN@reply-domain
    bounce_token_id: str
    reply_to: str | None = None
    unsubscribe_link: str | None = None


def reply_domain(clinic: Clinic, config: Config) -> str:
    return (clinic.reply_domain or clinic.sending_domain or config.smtp.hostname).lower()


def sending_domain(clinic: Clinic, config: Config) -> str:
    return (clinic.sending_domain or clinic.reply_domain or config.smtp.hostname).lower()


class TokenBatch:
    """Tokens minted for a round of emails, written with one INSERT at the end.

    :func:`gateway.tokens.issue` adds an ORM object and flushes per token; a round mints
    three tokens an email, and one executemany costs a fraction of sixty flushes. The rows
    are the same ``token`` rows :func:`gateway.tokens.peek` and ``consume`` read.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def issue(
        self,
        config: Config,
        purpose: str,
        subject_kind: str,
        subject_id: str,
        now: datetime,
        data: dict[str, Any],
        clinic_id: str | None = None,
        pair_id: str | None = None,
    ) -> tuple[str, str]:
        """A new token: (the value for the email, the row id)."""
        if purpose not in TOKEN_PURPOSES:
            raise ValueError(f"unknown token purpose {purpose!r}")
        value = secrets.token_urlsafe(tokens.TOKEN_BYTES)
        token_id = new_id()
        self.rows.append(
            {
                "id": token_id,
                "token_hash": hash_secret(value),
                "purpose": purpose,
                "subject_kind": subject_kind,
                "subject_id": subject_id,
                "data": {k: v for k, v in data.items() if v is not None},
                "clinic_id": clinic_id,
                "pair_id": pair_id,
                "single_use": purpose in tokens.SINGLE_USE,
                "created_at": now,
                "expires_at": now + tokens.lifetime(config.tokens, purpose),
                "consumed_at": None,
                "uses": 0,
            }
        )
        return value, token_id

    async def write(self, session: AsyncSession) -> None:
        if self.rows:
            await session.execute(insert(cast(Table, Token.__table__)), self.rows)
            self.rows = []


async def mint(
    session: AsyncSession,
    config: Config,
    row: Notification,
    clinic: Clinic,
    now: datetime,
    batch: TokenBatch | None = None,
) -> Addressing:
    """Issue this email's tokens and build its links. With a ``batch``, the caller writes
    the tokens (``batch.write``) before its transaction commits; without, they are written
    here."""
    own = batch is None
    batch = batch or TokenBatch()
    addressing = _addresses(batch, config, row, clinic, now)
    if own:
        await batch.write(session)
    return addressing


def _addresses(
    batch: TokenBatch, config: Config, row: Notification, clinic: Clinic, now: datetime
) -> Addressing:
    base = config.web.base_url.rstrip("/")
    domain = reply_domain(clinic, config)
    kind = Kind(row.kind)
    thread_id = row.context.get("thread_id")

    def token(
        purpose: str, subject_kind: str, subject_id: str, pair: str | None = None, **data: Any
    ) -> str:
        value, _id = batch.issue(
            config, purpose, subject_kind, subject_id, now, data, clinic.id, pair
        )
        return value

    bounce_value, bounce_id = batch.issue(
        config, "bounce_address", "notification", row.id, now, {"clinic_id": clinic.id}, clinic.id
    )
    mail_from = f"bounce+{bounce_value}@{domain}"
    reply_to = unsubscribe = None
    if row.patient_id is None:
        # Staff sign in to the workspace; their links carry no token.
        if kind == Kind.PASSWORD_RESET and row.staff_id:
            value = token("password_reset", "staff", row.staff_id)
            link = f"{base}/reset/{value}"
        elif thread_id:
            link = f"{base}/staff/threads/{thread_id}"
        elif row.context.get("pool_id"):
            link = f"{base}/staff/pools/{row.context['pool_id']}"  # digests: the pool's queue
        else:
            link = f"{base}/staff"
        return Addressing(link, mail_from, bounce_id)
    patient_id = row.patient_id
    if kind == Kind.REGISTRATION_INVITATION:
        # The link and the register+ Reply-To: two tokens, one pair. Whichever the person
        # uses first confirms the address and spends both (each is single-use).
        pair = new_id()
        value = token("registration", "patient", patient_id, pair, clinic_id=clinic.id)
        link = f"{base}/r/{value}"
        reply = token("registration_reply", "patient", patient_id, pair, clinic_id=clinic.id)
        reply_to = f"register+{reply}@{domain}"
    elif kind == Kind.PASSWORD_RESET:
        value = token("password_reset", "patient", patient_id)
        link = f"{base}/reset/{value}"
    else:
        thread_pair = new_id() if kind in THREAD_KINDS and thread_id else None
        value = token(
            "view_thread",
            "patient",
            patient_id,
            thread_pair,
            thread_id=thread_id,
            view=VIEWS.get(kind),
        )
        link = f"{base}/t/{value}"
        if thread_pair is not None:
            reply = token("reply_address", "patient", patient_id, thread_pair, thread_id=thread_id)
            reply_to = f"reply+{reply}@{domain}"
    if kind in OPTIONAL_KINDS:
        value = token("unsubscribe", "patient", patient_id, kind=str(kind))
        unsubscribe = f"{base}/u/{value}"
    return Addressing(link, mail_from, bounce_id, reply_to, unsubscribe)

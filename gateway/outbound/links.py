"""Tokens minted at render time for one email: its links, its Reply-To and its VERP sender.

Tokens are never stored in clear (only their hashes, by :mod:`gateway.tokens`), so they are
created when the email is built, once per delivery attempt. Every message gets its own
``bounce+TOKEN@<reply-domain>`` envelope sender (purpose ``bounce_address``, subject the
notification), so any bounce traces back to exactly one message.

Link paths (served by the portal and by :mod:`gateway.web.unsubscribe`): ``/r/<token>``
registration, ``/t/<token>`` view a thread (or the inbox) after sign-in, ``/reset/<token>``,
``/u/<token>`` unsubscribe. A link only leads to a page; nothing acts until the person POSTs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import tokens
from gateway.config import Config
from gateway.crypto import hash_secret
from gateway.models import Clinic, Notification, Token
from gateway.models.security import TOKEN_PURPOSES
from gateway.models.types import new_id
from gateway.notify import OPTIONAL_KINDS, Kind

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


def issue(
    session: AsyncSession,
    config: Config,
    purpose: str,
    subject_kind: str,
    subject_id: str,
    now: datetime,
    data: dict[str, Any],
) -> tuple[str, Token]:
    """:func:`gateway.tokens.issue` without its flush: a batch of emails mints three tokens
    each, and one flush at commit instead of one per token halves a delivery round."""
    if purpose not in TOKEN_PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    value = secrets.token_urlsafe(tokens.TOKEN_BYTES)
    row = Token(
        id=new_id(),
        token_hash=hash_secret(value),
        purpose=purpose,
        subject_kind=subject_kind,
        subject_id=subject_id,
        data={k: v for k, v in data.items() if v is not None},
        single_use=purpose in tokens.SINGLE_USE,
        created_at=now,
        expires_at=now + tokens.lifetime(config.tokens, purpose),
        uses=0,
    )
    session.add(row)
    return value, row


async def mint(
    session: AsyncSession, config: Config, row: Notification, clinic: Clinic, now: datetime
) -> Addressing:
    """Issue this email's tokens (in the caller's transaction) and build its links."""
    base = config.web.base_url.rstrip("/")
    domain = reply_domain(clinic, config)
    kind = Kind(row.kind)
    thread_id = row.context.get("thread_id")

    async def token(purpose: str, subject_kind: str, subject_id: str, **data: Any) -> str:
        value, _row = issue(session, config, purpose, subject_kind, subject_id, now, data)
        return value

    bounce_value, bounce_row = issue(
        session, config, "bounce_address", "notification", row.id, now, {"clinic_id": clinic.id}
    )
    mail_from = f"bounce+{bounce_value}@{domain}"
    reply_to = unsubscribe = None
    if row.patient_id is None:
        # Staff sign in to the workspace; their links carry no token.
        if kind == Kind.PASSWORD_RESET and row.staff_id:
            value = await token("password_reset", "staff", row.staff_id)
            link = f"{base}/reset/{value}"
        else:
            link = f"{base}/staff" + (f"/threads/{thread_id}" if thread_id else "")
        return Addressing(link, mail_from, bounce_row.id)
    patient_id = row.patient_id
    if kind == Kind.REGISTRATION_INVITATION:
        # One token serves the link and the register+TOKEN@ Reply-To: whichever the person
        # uses first confirms the address (the token is single-use).
        value = await token("registration", "patient", patient_id, clinic_id=clinic.id)
        link = f"{base}/r/{value}"
        reply_to = f"register+{value}@{domain}"
    elif kind == Kind.PASSWORD_RESET:
        value = await token("password_reset", "patient", patient_id)
        link = f"{base}/reset/{value}"
    else:
        value = await token(
            "view_thread", "patient", patient_id, thread_id=thread_id, view=VIEWS.get(kind)
        )
        link = f"{base}/t/{value}"
        if kind in THREAD_KINDS and thread_id:
            reply = await token("reply_address", "patient", patient_id, thread_id=thread_id)
            reply_to = f"reply+{reply}@{domain}"
    if kind in OPTIONAL_KINDS:
        value = await token("unsubscribe", "patient", patient_id, kind=str(kind))
        unsubscribe = f"{base}/u/{value}"
    return Addressing(link, mail_from, bounce_row.id, reply_to, unsubscribe)

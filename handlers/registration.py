"""``register+TOKEN@``: a reply to the registration invitation confirms the address.

Only an authenticated reply from the address on file confirms it (a forged reply could
otherwise verify someone else's mailbox). When the reply's own words say "I agree" and the
quoted invitation names a terms version, the agreement to that version is recorded too;
otherwise the terms are still accepted on the portal.

The address carries its own token (purpose ``registration_reply``), never the ``/r/`` link's:
someone who sees the Reply-To cannot open the link and choose the password. Confirming here
spends the invitation, link included (:func:`gateway.tokens.use`); a patient who has no
password yet is sent a fresh invitation, whose link is the way to choose one.
"""

from __future__ import annotations

import re

from gateway import audit, tokens
from gateway.errors import TokenError
from gateway.inbound.handling import Confirmed, Context, Outcome, Quarantine
from gateway.portal import invitations, terms
from handlers.base import authenticated_patient

_AGREE = re.compile(r"^\W*(i\s+agree|yes,?\s+i\s+agree|acepto|estoy\s+de\s+acuerdo)\b", re.I)
_TERMS_VERSION = re.compile(
    r"(?:terms|t[ée]rminos)[^\n]{0,40}?(?:version|versi[óo]n)\s*:?\s*([A-Za-z0-9][A-Za-z0-9._-]{0,31})",
    re.I,
)


def agreed_terms_version(full_text: str, reply_text: str) -> str | None:
    """The quoted terms version, when the reply's own first words are "I agree" and the
    quoted version is the current one (agreeing to an older text agrees to nothing now)."""
    if not _AGREE.search(reply_text):
        return None
    m = _TERMS_VERSION.search(full_text)
    if m is None or m.group(1) != terms.CURRENT:
        return None
    return m.group(1)


class RegistrationHandler:
    name = "registration"

    async def handle(self, ctx: Context) -> Outcome:
        patient = await authenticated_patient(ctx, "registration_reply")
        if isinstance(patient, Quarantine):
            return patient
        assert ctx.token is not None
        try:
            await tokens.use(ctx.session, ctx.token, ctx.now)
        except TokenError:
            return Quarantine("token_used", "the invitation was already used")
        actor = f"patient:{patient.id}"
        if patient.email_verified_at is None:
            patient.email_verified_at = ctx.now
            await audit.record(
                ctx.session,
                actor,
                "patient.email_confirmed",
                "patient",
                patient.id,
                at=ctx.now,
                via="email_reply",
                inbound_id=ctx.inbound.id,
            )
        version = agreed_terms_version(ctx.mail.text, ctx.mail.new_text)
        if version and patient.terms_agreed_at is None:
            patient.terms_version = version
            patient.terms_agreed_at = ctx.now
            await audit.record(
                ctx.session,
                actor,
                "patient.terms_agreed",
                "patient",
                patient.id,
                at=ctx.now,
                terms_version=version,
                via="email_reply",
                inbound_id=ctx.inbound.id,
            )
        if patient.status == "pending" and patient.terms_agreed_at and patient.email_verified_at:
            patient.status = "active"
        if not patient.password_hash and ctx.clinic is not None:
            # The spent link was the way to choose a password: send a fresh one.
            await invitations.invite(ctx.session, ctx.services, patient=patient, clinic=ctx.clinic)
        return Confirmed(patient.id, terms_agreed=patient.terms_agreed_at is not None)


handler = RegistrationHandler()

"""Checks that several handlers share: which patient a message provably comes from.

What a handler sees and returns (``Context``, the outcomes, the ``Handler`` protocol) is the
intake's contract and lives in ``gateway/inbound/handling.py``. This check stays here: it is
handler policy (which token purposes name a patient, which reason codes a failure gets), not
message authentication, which ``gateway/inbound/auth.py`` does for every message.
"""

from __future__ import annotations

import hmac

from gateway.inbound.handling import Context, Quarantine
from gateway.models import Patient
from gateway.portal.patients import email_index


async def authenticated_patient(ctx: Context, purpose: str) -> Patient | Quarantine:
    """The patient a patient-token names, if the message provably comes from them.

    Both must hold: the token (live, right purpose) names this patient, and a DKIM or SPF
    identity aligned with the From domain passed, with the From address being the one on file.
    """
    token = ctx.token
    if token is None or token.purpose != purpose:
        return Quarantine("token_expired", "the address token is no longer live")
    if token.subject_kind != "patient":
        return Quarantine("token_invalid", "the token does not name a patient")
    patient = await ctx.session.get(Patient, token.subject_id)
    if patient is None:
        return Quarantine("token_invalid", "the token's patient no longer exists")
    if ctx.clinic is not None and ctx.clinic.org_id != patient.org_id:
        return Quarantine("token_invalid", "the token's patient is not in this organisation")
    if ctx.sender is None:
        return Quarantine("no_valid_from", "no single valid From address")
    if not ctx.verdict.aligned_pass:
        v = ctx.verdict
        return Quarantine("not_authenticated", f"dkim={v.dkim} spf={v.spf} none aligned with From")
    on_file = patient.email_index
    claimed = email_index(ctx.services.keyring, ctx.sender.address)
    if not hmac.compare_digest(on_file, claimed):
        return Quarantine("sender_not_patient", "From is not the address on file for the token")
    if patient.status == "disabled":
        return Quarantine("patient_disabled", "the patient's account is disabled")
    return patient

"""Staff answering by email, from the clinic's own DKIM-aligned domain (off by default).

When a clinic turns ``Clinic.staff_email_replies`` on, a staff notice about a thread (an SLA
warning, say) may carry ``Reply-To: reply+TOKEN@<reply domain>`` whose token names the staff
member and the thread (:func:`reply_address`). The answer is filed like a portal answer
(:mod:`handlers.staff_reply`) only if it is DKIM-signed by, and sent from, the clinic's own
sending domain, from the very address on the staff account: a patient-side mailbox or a
lookalike domain can never speak for the clinic.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import tokens
from gateway.addresses import index_form
from gateway.models import Clinic, Staff
from gateway.services import Services


async def reply_address(
    session: AsyncSession,
    services: Services,
    *,
    clinic: Clinic,
    staff: Staff,
    thread_id: str,
    now: datetime,
) -> str | None:
    """A Reply-To for a staff notice about ``thread_id``, or None when the clinic has it off."""
    if not clinic.staff_email_replies or not clinic.reply_domain or not clinic.sending_domain:
        return None
    if staff.clinic_id != clinic.id or not staff.active:
        return None
    issued = await tokens.issue(
        session,
        services.config.tokens,
        purpose="reply_address",
        subject_kind="staff",
        subject_id=staff.id,
        now=now,
        data={"thread_id": thread_id},
        clinic_id=clinic.id,
    )
    return f"reply+{issued.value}@{clinic.reply_domain}"


def on_clinic_domain(domain: str, clinic: Clinic) -> bool:
    """The sender's domain is the clinic's sending domain (or a subdomain of it)."""
    own = clinic.sending_domain.lower().rstrip(".")
    domain = domain.lower().rstrip(".")
    return bool(own) and (domain == own or domain.endswith("." + own))


def is_staff_address(services: Services, staff: Staff, address: str) -> bool:
    claimed = services.keyring.blind_index(index_form(address), "staff-email")
    return hmac.compare_digest(staff.email_index, claimed)

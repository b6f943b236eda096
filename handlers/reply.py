"""``reply+TOKEN@``: a patient answered a notification by email.

(A staff member's reply token at the same address shape goes to ``handlers/staff_reply.py``:
the routing table tells them apart by the token's subject kind.)

Filed only when the token names the patient and the aligned authenticated sender is the
address on file (see :func:`handlers.base.authenticated_patient`). Quoted text and signatures
are stripped (``ParsedMail.new_text``, read in the bounded parse), so only the new words enter the
thread, encrypted, through the same :mod:`gateway.careteam.threads` functions the portal uses
(which notify the pool and queue the patient's PHI-free acknowledgement).
"""

from __future__ import annotations

from gateway.careteam import threads
from gateway.errors import UsageError
from gateway.inbound.handling import Context, Filed, Outcome, Quarantine
from gateway.models import Clinic
from gateway.portal import patients
from handlers.base import authenticated_patient


class ReplyHandler:
    name = "reply"

    async def handle(self, ctx: Context) -> Outcome:
        patient = await authenticated_patient(ctx, "reply_address")
        if isinstance(patient, Quarantine):
            return patient
        text = ctx.mail.new_text
        if not text:
            return Quarantine("empty_reply", "no new text once quoted text was removed")
        actor = f"patient:{patient.id}"
        assert ctx.token is not None
        thread_id = ctx.token.data.get("thread_id")
        try:
            if thread_id:
                thread = await threads.thread_for_patient(ctx.session, str(thread_id), patient.id)
                if thread is None:
                    return Quarantine("thread_not_found", "the token's thread is not the patient's")
                message = await threads.post_patient_message(
                    ctx.session,
                    ctx.services,
                    thread=thread,
                    body=text,
                    source="email",
                    inbound_id=ctx.inbound.id,
                    actor=actor,
                )
                return Filed(thread.id, message.id)
            enrolment = await patients.current_enrolment(ctx.session, patient.id)
            clinic = await ctx.session.get(Clinic, enrolment.clinic_id) if enrolment else None
            if clinic is None:
                return Quarantine("not_enrolled", "the patient has no current clinic")
            subject = ctx.mail.subject.strip()[:200] or "Email message"
            thread = await threads.create_thread(
                ctx.session,
                ctx.services,
                patient=patient,
                clinic=clinic,
                request_type="question",
                subject=subject,
                body=text,
                source="email",
                actor=actor,
            )
        except UsageError as exc:  # e.g. a body over the length limit: an operator decides
            return Quarantine("not_fileable", str(exc)[:150])
        first = await threads.messages_of(ctx.session, thread.id, include_internal=False)
        return Filed(thread.id, first[0].id if first else "")


handler = ReplyHandler()

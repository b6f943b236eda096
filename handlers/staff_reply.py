"""``reply+TOKEN@`` whose token names a staff member: a clinician answered by email.

Its own route in the table (``staff_reply``), told apart from a patient's reply at RCPT time
by the token's subject kind.

Filed through :func:`gateway.careteam.threads.post_staff_message` (the portal's path: stops the SLA
clock, tells the patient PHI-free) only when every check holds: the clinic has staff email
replies on; the token names an active staff member of this clinic and a thread of this
clinic; a DKIM signature aligned with the From domain passed (SPF alone is not enough: the
clinic's own signing domain is the point); the From domain is the clinic's sending domain;
and the From address is the one on the staff account. Anything else is quarantined.
"""

from __future__ import annotations

from gateway.careteam import staff_replies, threads
from gateway.errors import UsageError
from gateway.inbound.handling import Context, Filed, Outcome, Quarantine
from gateway.models import Staff, Thread


class StaffReplyHandler:
    name = "staff_reply"

    async def handle(self, ctx: Context) -> Outcome:
        token, clinic = ctx.token, ctx.clinic
        if token is None or token.purpose != "reply_address":
            return Quarantine("token_expired", "the address token is no longer live")
        if token.subject_kind != "staff":
            return Quarantine("token_invalid", "the token does not name a staff member")
        if clinic is None or not clinic.staff_email_replies:
            return Quarantine("staff_replies_off", "the clinic does not take staff email replies")
        staff = await ctx.session.get(Staff, token.subject_id)
        if staff is None or not staff.active or staff.clinic_id != clinic.id:
            return Quarantine("token_invalid", "the token's staff member is not active here")
        if ctx.sender is None:
            return Quarantine("no_valid_from", "no single valid From address")
        if not ctx.verdict.dkim_aligned:
            return Quarantine("not_authenticated", f"dkim={ctx.verdict.dkim} not aligned with From")
        if not staff_replies.on_clinic_domain(ctx.sender.domain, clinic):
            return Quarantine("sender_not_clinic", "From is not on the clinic's sending domain")
        if not staff_replies.is_staff_address(ctx.services, staff, ctx.sender.address):
            return Quarantine("sender_not_staff", "From is not the address on the staff account")
        thread = await ctx.session.get(Thread, str(token.data.get("thread_id", "")))
        if thread is None or not threads.staff_may_act(staff, thread):
            return Quarantine("thread_not_found", "the token's thread is not this clinic's")
        text = ctx.mail.new_text
        if not text:
            return Quarantine("empty_reply", "no new text once quoted text was removed")
        try:
            message = await threads.post_staff_message(
                ctx.session, ctx.services, thread=thread, staff=staff, body=text, source="email"
            )
        except UsageError:
            return Quarantine("reply_refused", "the reply could not be filed (e.g. too long)")
        return Filed(thread.id, message.id)


handler = StaffReplyHandler()

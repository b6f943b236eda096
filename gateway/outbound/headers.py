"""The headers and MIME structure of every notification email.

- ``Message-ID`` on the clinic's sending domain, unique per attempt;
- ``Auto-Submitted: auto-generated`` (RFC 3834) and ``X-Auto-Response-Suppress: All`` so
  vacation responders stay quiet;
- ``Reply-To`` only where a reply makes sense (``reply+TOKEN@`` / ``register+TOKEN@``);
- ``List-Unsubscribe`` + ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058) on
  kinds a patient may switch off.

The body is multipart/alternative (text first, then HTML), serialised with CRLF line ends
so what is signed is byte for byte what is sent.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from gateway.outbound.render import Rendered

# CRLF line ends; headers are not folded below RFC 5322's 998 limit, so a long Message-ID
# or List-Unsubscribe stays one line (some receivers mis-read folded identifiers).
POLICY = SMTP.clone(max_line_length=998)
# Body parts are encoded under this one: quoted-printable lines of at most 76 (RFC 2045).
ENCODE = SMTP.clone(max_line_length=76)


def message_id(notification_id: str, domain: str) -> str:
    return f"<{notification_id}.{secrets.token_hex(6)}@{domain}>"


def build(
    rendered: Rendered,
    *,
    from_name: str,
    from_address: str,
    to: str,
    msg_id: str,
    date: datetime,
    reply_to: str | None = None,
    unsubscribe_link: str | None = None,
) -> bytes:
    """The complete message as bytes with CRLF line ends, ready to be DKIM-signed."""
    # Parts are encoded under ENCODE; the final rendering uses POLICY, which only changes
    # how headers are folded.
    msg = EmailMessage(policy=ENCODE)
    local, _, domain = from_address.rpartition("@")
    msg["From"] = Address(display_name=from_name, username=local, domain=domain)
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = msg_id
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    if unsubscribe_link:
        msg["List-Unsubscribe"] = f"<{unsubscribe_link}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=POLICY)

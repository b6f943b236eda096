"""Turning raw inbound bytes into something safe to look at.

The header block is capped (``[inbound] max_header_bytes``) before any parser sees it, and the
full parse (stdlib ``email`` with ``policy.default``) runs in a worker thread with a deadline,
so a crafted message cannot hold the event loop. The sender is read from the From header with
the modern header parser and then validated strictly (never rewritten). Also here: what the
intake and the handlers read from a parsed message (its text, the reply's own new words,
whether an automatic responder wrote it).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from typing import TYPE_CHECKING, Any

from mailparser_reply import EmailReplyParser

from gateway.addresses import validate_address
from gateway.errors import CarebridgeError, InvalidAddressError

if TYPE_CHECKING:
    from gateway.inbound.auth import ReceivedEnvelope

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_REPLY_LANGUAGES = ["en", "es", "de", "fr"]
_OOO_SUBJECT = re.compile(
    r"(out of (the )?office|auto(matic)?[- ]?(reply|response|antwort)|autoreply|"
    r"vacation|away from (my|the) (desk|office)|abwesenheit|fuera de la oficina|"
    r"respuesta autom[aá]tica|r[ée]ponse automatique|absence)",
    re.I,
)
_BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}


class MalformedMessage(CarebridgeError):
    """The message cannot be accepted as it is; ``reason`` is a PHI-free code."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed message: {reason}")


def header_block(raw: bytes, max_bytes: int) -> bytes:
    """The bytes before the first blank line, refusing a header block over the cap."""
    m = _BLANK_LINE.search(raw, 0, max_bytes + 4)
    if m is None:
        if len(raw) > max_bytes:
            raise MalformedMessage("header_too_large")
        return raw
    if m.start() > max_bytes:
        raise MalformedMessage("header_too_large")
    return raw[: m.start()]


def message_id_of(headers: bytes) -> str | None:
    """The Message-ID as written (stripped), read with the cheap compat32 header parser."""
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(headers)
    value = parsed.get("Message-ID")
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def dedupe_key(message_id: str | None, raw: bytes, route_key: str) -> str:
    """SHA-256 of the Message-ID (or of the whole message when it has none) and the route."""
    basis = message_id.encode("utf-8", "replace") if message_id else raw
    return hashlib.sha256(basis + b"\x00" + route_key.encode()).hexdigest()


def parse_sync(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


async def parse(raw: bytes, *, max_header_bytes: int, deadline: float) -> EmailMessage:
    """Parse with ``policy.default``, bounded in header size and in time (seconds)."""
    header_block(raw, max_header_bytes)
    try:
        async with asyncio.timeout(deadline):
            return await asyncio.to_thread(parse_sync, raw)
    except TimeoutError:
        raise MalformedMessage("parse_timeout") from None
    except Exception:  # the stdlib parser is lenient; anything it raises is a malformed input
        raise MalformedMessage("unparsable") from None


@dataclass(frozen=True)
class Sender:
    address: str
    domain: str


def header_text(msg: EmailMessage, name: str) -> str:
    """A header's decoded value, or '' when missing or undecodable."""
    try:
        value = msg.get(name)
    except Exception:  # policy.default parses lazily; a broken header is as good as absent
        return ""
    return "" if value is None else str(value)


def from_sender(msg: EmailMessage) -> Sender | None:
    """The single From address, strictly validated; None when absent, multiple or invalid."""
    try:
        values = msg.get_all("From") or []
        if len(values) != 1:
            return None
        addresses: tuple[Any, ...] = tuple(getattr(values[0], "addresses", ()))
    except Exception:  # a From header the parser chokes on is as good as none
        return None
    if len(addresses) != 1:
        return None
    spec = str(addresses[0].addr_spec)
    try:
        address = validate_address(spec)
    except InvalidAddressError:
        return None
    return Sender(address, address.rpartition("@")[2].lower())


def text_body(msg: EmailMessage) -> str:
    """The plain-text part (or the HTML part with tags removed), decoded."""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        content = part.get_content()
    except Exception:  # undecodable charsets or broken MIME: no text to file
        return ""
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        content = re.sub(r"<[^>]+>", " ", content)
    return content


def new_text(msg: EmailMessage) -> str:
    """The reply's own words: quoted history and signature removed (mail-parser-reply)."""
    body = text_body(msg).replace("\r\n", "\n")
    if not body.strip():
        return ""
    parsed = EmailReplyParser(languages=_REPLY_LANGUAGES).read(text=body)
    if not parsed.replies:
        return body.strip()
    return str(parsed.replies[0].body).strip()


def automated_reason(msg: EmailMessage, envelope: ReceivedEnvelope, source: str) -> str | None:
    """Why this message is automatic (RFC 3834 and the non-standard markers: a short code),
    or None when a person wrote it."""
    auto = header_text(msg, "Auto-Submitted").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "auto_submitted"
    if header_text(msg, "Precedence").strip().lower() in _BULK_PRECEDENCE:
        return "precedence"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Response-Suppress"):
        if msg.get(name) is not None:
            return "x_autoreply"
    if _OOO_SUBJECT.search(header_text(msg, "Subject")):
        return "ooo_subject"
    if source == "smtp" and envelope.mail_from == "":
        return "null_sender"
    if header_text(msg, "Return-Path").strip() == "<>":
        return "null_sender"
    return None

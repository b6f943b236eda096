"""Turning raw inbound bytes into something safe to look at.

The header block is capped (``[inbound] max_header_bytes``) and every header value held to
``max_address_header_bytes`` / ``max_header_value_bytes`` by a linear scan at DATA, before any
parser sees them. The full parse (stdlib ``email`` with ``policy.default``) runs in the parse
pool's worker processes (``gateway/executors.py``) with a deadline that kills the worker, and
reads there every value the intake and the handlers need (:class:`ParsedMail`: the headers as
plain strings, the text, the reply's own new words), so a crafted message cannot hold the
event loop: nothing on it touches a lazily parsed header. The sender is read from the From
header with the modern header parser and then validated strictly (never rewritten).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from typing import TYPE_CHECKING, Any

from mailparser_reply import EmailReplyParser

from gateway.addresses import validate_address
from gateway.errors import CarebridgeError, InvalidAddressError
from gateway.executors import DeadlineExceeded, ProcessPool, WorkerFailed

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
_AUTOREPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Response-Suppress")


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


# Address headers: the cheap scan at DATA holds them to ``max_address_header_bytes``.
ADDRESS_HEADERS = frozenset(
    {
        b"from",
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"bcc",
        b"return-path",
        b"resent-from",
        b"resent-sender",
        b"resent-to",
        b"resent-cc",
        b"resent-bcc",
        b"disposition-notification-to",
    }
)
_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def check_header_values(headers: bytes, *, max_address: int, max_value: int) -> None:
    """Refuse a header whose value (folded lines included) is over its cap.

    A linear scan of the raw header block: no header parser runs, so the check itself cannot
    be slowed by the input. CPython's modern header parser is super-linear on some crafted
    values (a long folded From of quoted pairs), so the caps keep every value it will ever
    see small."""
    starts = [(m.start(), m.group(1).lower()) for m in _FIELD_START.finditer(headers)]
    for i, (pos, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(headers)
        size = end - pos - len(name) - 1
        if name in ADDRESS_HEADERS and size > max_address:
            raise MalformedMessage("address_header_too_large")
        if size > max_value:
            raise MalformedMessage("header_value_too_large")


@dataclass(frozen=True)
class Sender:
    address: str
    domain: str


@dataclass(frozen=True)
class ParsedMail:
    """Everything the intake and the handlers read from a message, as plain values.

    Built inside the bounded parse (a worker process), so nothing on the event loop ever
    reads an ``EmailMessage`` header lazily: ``policy.default`` parses a header's value on
    first access, and that parse is where crafted input is slow."""

    sender: Sender | None = None
    subject: str = ""
    auto_submitted: str = ""
    precedence: str = ""
    return_path: str = ""
    x_autoreply: bool = False
    list_id: str = ""
    list_unsubscribe: str = ""
    message_id: str = ""
    in_reply_to: str = ""
    references: str = ""
    text: str = ""  # the plain-text part (or the HTML part's text)
    new_text: str = ""  # the reply's own words, quoted text and signature removed
    # What the route's ``extract`` function returned for the parsed message (e.g. a bounce's
    # classification), or None.
    extracted: object = None


def parse_mail(raw: bytes, extract: Callable[[EmailMessage], object] | None = None) -> ParsedMail:
    """Parse and read every value the intake needs (blocking: run it in the parse pool)."""
    try:
        msg = parse_sync(raw)
    except Exception:  # the stdlib parser is lenient; anything it raises is a malformed input
        raise MalformedMessage("unparsable") from None
    text = text_body(msg)
    extracted = None
    if extract is not None:
        try:
            extracted = extract(msg)
        except Exception:  # a route's reader that chokes reads nothing
            extracted = None
    return ParsedMail(
        sender=from_sender(msg),
        subject=header_text(msg, "Subject"),
        auto_submitted=header_text(msg, "Auto-Submitted"),
        precedence=header_text(msg, "Precedence"),
        return_path=header_text(msg, "Return-Path"),
        x_autoreply=any(msg.get(n) is not None for n in _AUTOREPLY_HEADERS),
        list_id=header_text(msg, "List-Id"),
        list_unsubscribe=header_text(msg, "List-Unsubscribe"),
        message_id=header_text(msg, "Message-ID").strip(),
        in_reply_to=header_text(msg, "In-Reply-To").strip(),
        references=header_text(msg, "References").strip(),
        text=text,
        new_text=new_text(text),
        extracted=extracted,
    )


async def parse(
    executor: ProcessPool,
    raw: bytes,
    *,
    max_header_bytes: int,
    deadline: float,
    extract: Callable[[EmailMessage], object] | None = None,
) -> ParsedMail:
    """:func:`parse_mail` in the parse pool: bounded in header size and in time (seconds);
    past the deadline its worker process is killed."""
    header_block(raw, max_header_bytes)
    try:
        return await executor.run(parse_mail, raw, extract, deadline=deadline)
    except DeadlineExceeded:
        raise MalformedMessage("parse_timeout") from None
    except WorkerFailed:  # the parser raised, or its worker died (e.g. out of memory)
        raise MalformedMessage("unparsable") from None


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


def new_text(text: str) -> str:
    """The reply's own words: quoted history and signature removed (mail-parser-reply)."""
    body = text.replace("\r\n", "\n")
    if not body.strip():
        return ""
    parsed = EmailReplyParser(languages=_REPLY_LANGUAGES).read(text=body)
    if not parsed.replies:
        return body.strip()
    return str(parsed.replies[0].body).strip()


def automated_reason(mail: ParsedMail, envelope: ReceivedEnvelope, source: str) -> str | None:
    """Why this message is automatic (RFC 3834 and the non-standard markers: a short code),
    or None when a person wrote it."""
    auto = mail.auto_submitted.strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "auto_submitted"
    if mail.precedence.strip().lower() in _BULK_PRECEDENCE:
        return "precedence"
    if mail.x_autoreply:
        return "x_autoreply"
    if _OOO_SUBJECT.search(mail.subject):
        return "ooo_subject"
    if source == "smtp" and envelope.mail_from == "":
        return "null_sender"
    if mail.return_path.strip() == "<>":
        return "null_sender"
    return None

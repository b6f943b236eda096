"""Strict email address validation: refuse, never rewrite.

The installed Python's ``email.utils.parseaddr`` mis-parses crafted addresses
(CVE-2023-27043), so addresses are checked with email-validator after a plain-character screen
that refuses line breaks, NUL, quotes, brackets, commas and display-name forms outright.
Errors never echo the address (it is PHI).
"""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

from gateway.errors import InvalidAddressError

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\"'<>(),;:\\\[\]`]")
_REASONS = {
    "\r": "a line break",
    "\n": "a line break",
    "\x00": "a NUL byte",
    '"': "a quote",
    "'": "a quote",
    "<": "an angle bracket",
    ">": "an angle bracket",
    ",": "a comma (more than one address?)",
    ";": "a semicolon",
    " ": "a space",
}


def validate_address(address: str) -> str:
    """Return the normalised address, or raise :class:`InvalidAddressError` saying why."""
    if not isinstance(address, str) or not address:
        raise InvalidAddressError("email address is empty")
    if len(address) > 254:
        raise InvalidAddressError("email address is longer than 254 characters")
    bad = _FORBIDDEN.search(address)
    if bad:
        reason = _REASONS.get(bad.group(), "a character not allowed in an address")
        raise InvalidAddressError(f"email address refused: it contains {reason}")
    if address.count("@") != 1:
        raise InvalidAddressError("email address refused: it must contain exactly one @")
    try:
        result = validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            allow_empty_local=False,
            globally_deliverable=False,
        )
    except EmailNotValidError as exc:
        # Its messages describe the rule; drop any that quote a part of the address (PHI).
        text = str(exc)
        local, _, domain = address.rpartition("@")
        if (local and local in text) or (domain and domain in text):
            text = "it is not a valid address"
        raise InvalidAddressError(f"email address refused: {text}") from None
    local, _, domain = result.normalized.rpartition("@")
    if "." not in domain:
        raise InvalidAddressError("email address refused: the domain has no dot")
    return f"{local}@{domain.lower()}"


def index_form(address: str) -> str:
    """The form hashed into the blind index: case-insensitive, so lookups match."""
    return validate_address(address).lower()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()

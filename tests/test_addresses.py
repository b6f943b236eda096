"""Strict address validation: hostile forms are refused, never rewritten into something else."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.addresses import validate_address
from gateway.errors import InvalidAddressError

HOSTILE = [
    "victim@example.org\r\nBcc: evil@example.com",
    "victim@example.org\nRCPT TO:<evil@example.com>",
    "victim@example.org\x00evil@example.com",
    '"evil@example.com"@example.org',
    "alice@example.org <evil@example.com>",
    "Alice <alice@example.org>",
    "alice@example.org, evil@example.com",
    "alice@example.org;evil@example.com",
    # CVE-2023-27043 forms: parseaddr picks the wrong address out of these.
    "alice@example.org]<evil@example.com>",
    '"alice@example.org"@evil.example.com',
    "alice(comment)@example.org",
    "alice@[127.0.0.1]",
    "@example.org",
    "alice@",
    "alice@@example.org",
    "a" * 250 + "@example.org",
    "alice@example..org",
    " alice@example.org",
    "alice@example.org ",
    "\\alice@example.org",
]


@pytest.mark.parametrize("address", HOSTILE)
def test_hostile_addresses_are_refused_without_echo(address: str):
    with pytest.raises(InvalidAddressError) as info:
        validate_address(address)
    message = str(info.value)
    assert "evil" not in message and "alice" not in message and "victim" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("alice@example.org", "alice@example.org"),
        ("Alice.Smith+tag@Example.ORG", "Alice.Smith+tag@example.org"),
        ("o'brien@example.org", None),  # a quote: refused rather than guessed at
    ],
)
def test_plain_addresses(given: str, normal: str | None):
    if normal is None:
        with pytest.raises(InvalidAddressError):
            validate_address(given)
    else:
        assert validate_address(given) == normal


@settings(max_examples=2000, deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_anything_accepted_is_one_plain_address(text: str):
    try:
        out = validate_address(text)
    except InvalidAddressError:
        return
    assert out.count("@") == 1
    assert not any(c in out for c in "\r\n\x00\"'<>(),;:\\[] \t")
    local, _, domain = out.partition("@")
    assert local and domain and "." in domain
    # Accepted input is only normalised (Unicode NFC, domain case), never restructured.
    assert local == unicodedata.normalize("NFC", text.rpartition("@")[0])

"""Hostile inputs that tests build themselves, shared by more than one test module."""

from __future__ import annotations


def hostile_from(size: int, to: str) -> bytes:
    """A From of ``""a`` repeated, folded like a mail client would (the reported input)."""
    value = '""a' * (size // 3)
    folded = "\r\n ".join(value[i : i + 70] for i in range(0, len(value), 70))
    return (
        f"From: {folded}\r\nTo: {to}\r\nSubject: hello\r\n"
        "Message-ID: <hostile@example.org>\r\n\r\nhello\r\n"
    ).encode()

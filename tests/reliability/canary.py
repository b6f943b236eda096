"""Canary strings planted in PHI fields, and a scanner that looks for them in any disguise.

A leak rarely shows the value verbatim: a mail body may be base64 or quoted-printable, a
header RFC 2047-encoded, a log line lower-cased, a driver may write UTF-16. So each canary
marker is searched for in several encodings (utf-8, utf-16-le/be, base64 at all three byte
alignments, quoted-printable, percent-encoding, HTML escaping), in the raw bytes and in a
lower-cased copy, and MIME messages are additionally decoded part by part before scanning.

Markers are short, unusual and fixed; each planted value is ``marker + serial`` so one search
per marker finds every record, however many were planted.
"""

from __future__ import annotations

import base64
import email
import email.policy
import html
import quopri
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

# One marker per kind of PHI. Each is unlikely to occur by chance (>= 8 distinctive bytes).
MARKERS: dict[str, str] = {
    "given_name": "Zebulonqx",
    "family_name": "Canaryfield",
    "email_local": "canary-zq7",
    "phone": "5550199731",
    "text": "CANARYPHI7f3a",
    "medication": "Canarycillin",
    "filename": "canaryscan",
    "result": "Canaryglobulin",
    "staff_name": "Nursecanaryk",
}
# Dates of birth can only be a date; this one is searched for in ISO and US forms.
CANARY_DOB = date(1911, 11, 11)
DOB_FORMS = ("1911-11-11", "11/11/1911", "19111111")


def given_name(i: int) -> str:
    return f"{MARKERS['given_name']}{i}"


def family_name(i: int) -> str:
    return f"{MARKERS['family_name']}{i}"


def email_address(i: int, domain: str = "example.org") -> str:
    return f"{MARKERS['email_local']}{i}@{domain}"


def phone(i: int) -> str:
    return f"+1 {MARKERS['phone']}{i:04d}"


def text(i: int, what: str = "note") -> str:
    """Free text (subject, body, note) that also carries non-ASCII, as real text does."""
    return f"{MARKERS['text']}{i} {what} señal ü {MARKERS['medication']} 20mg"


def _b64_forms(needle: bytes) -> set[bytes]:
    """The part of base64(x + needle + y) that does not depend on x or y, for each alignment."""
    forms: set[bytes] = set()
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + needle)
        # Characters covering pad bytes are unstable; so is the tail touching the next bytes.
        start = (pad * 4 + 2) // 3
        usable = (len(needle) + pad) // 3 * 4
        core = enc[start:usable]
        if len(core) >= 6:
            forms.add(core)
    return forms


def encodings_of(value: str) -> set[bytes]:
    """Byte patterns under which ``value`` could appear in stored or transmitted data."""
    forms: set[bytes] = set()
    for v in {value, value.lower(), value.upper()}:
        raw = v.encode("utf-8")
        forms.add(raw)
        forms.add(v.encode("utf-16-le"))
        forms.add(v.encode("utf-16-be"))
        forms |= _b64_forms(raw)
        forms |= _b64_forms(v.encode("utf-16-le"))
        forms.add(quopri.encodestring(raw, header=False).rstrip(b"=\n"))
        forms.add(quopri.encodestring(raw, header=True))
        forms.add(urllib.parse.quote(v, safe="").encode("ascii"))
        forms.add(html.escape(v).encode("utf-8"))
    return {f for f in forms if f}


def all_needles() -> dict[bytes, str]:
    """Every byte pattern to look for, mapped to the marker it encodes."""
    out: dict[bytes, str] = {}
    for name, marker in MARKERS.items():
        for form in encodings_of(marker):
            out[form] = name
    for form in DOB_FORMS:
        for enc in encodings_of(form):
            out[enc] = "date_of_birth"
    return out


_NEEDLES = all_needles()


def markers_in(data: bytes) -> set[str]:
    """Every kind of canary present in ``data`` (for positive controls)."""
    low = data.lower()
    return {m for n, m in _NEEDLES.items() if n in data or n in low}


@dataclass
class Hit:
    where: str
    marker: str
    offset: int
    excerpt: bytes

    def __str__(self) -> str:
        return f"{self.where}: {self.marker} at {self.offset}: {self.excerpt!r}"


@dataclass
class Scan:
    """Accumulates hits across many sources; ``scanned`` proves something was looked at."""

    hits: list[Hit] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)

    def bytes(self, where: str, data: bytes) -> None:
        self.scanned[where] = self.scanned.get(where, 0) + len(data)
        for haystack in (data, data.lower()):
            for needle, marker in _NEEDLES.items():
                at = haystack.find(needle)
                if at >= 0:
                    lo = max(0, at - 40)
                    self.hits.append(Hit(where, marker, at, data[lo : at + len(needle) + 40]))
                    return  # one hit per source is enough to fail; keeps reports short

    def text(self, where: str, value: str) -> None:
        self.bytes(where, value.encode("utf-8", "surrogateescape"))

    def mime(self, where: str, raw: bytes) -> None:
        """Scan a message raw, then each header decoded and each part's decoded payload."""
        self.bytes(where, raw)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        for name, value in msg.items():
            self.text(f"{where} header {name}", f"{name}: {value}")
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                self.bytes(f"{where} part {part.get_content_type()}", payload)

    def many(self, where: str, values: Iterable[object]) -> None:
        for i, v in enumerate(values):
            data = v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")
            self.bytes(f"{where}[{i}]", data)

    def assert_clean(self) -> None:
        assert self.scanned, "nothing was scanned: the scan proves nothing"
        if self.hits:
            report = "\n".join(str(h) for h in self.hits[:20])
            raise AssertionError(f"{len(self.hits)} PHI canary hit(s):\n{report}")

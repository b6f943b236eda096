"""Every notification kind renders in English and Spanish, as text and HTML, from the
PHI-free context only; clinic names are escaped in HTML; subjects are one line."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from gateway.outbound.notify import PATIENT_KINDS, Kind
from gateway.outbound.render import EmailContext, Renderer, brand_color, format_when

STAFF_KINDS = [k for k in Kind if k not in PATIENT_KINDS] + [Kind.PASSWORD_RESET]
CASES = [("patient", k) for k in sorted(PATIENT_KINDS)] + [("staff", k) for k in STAFF_KINDS]


def _context(audience: str, kind: Kind, lang: str) -> EmailContext:
    return EmailContext(
        audience=audience,
        kind=str(kind),
        lang=lang,
        clinic_name="Riverside & <Sons>",
        clinic_phone="+1 555 0100",
        link="https://portal.example/t/TOKEN",
        unsubscribe_link="https://portal.example/u/UNSUB",
        reply_allowed=True,
        count=3,
        urgent_count=1,
        expected_reply=format_when(datetime(2026, 3, 3, 15, tzinfo=UTC), "America/Chicago", lang),
        reopens=format_when(datetime(2026, 3, 3, 14, tzinfo=UTC), "America/Chicago", lang),
        pool_name="Refills",
    )


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.mark.parametrize(("audience", "kind"), CASES)
def test_every_kind_renders_in_both_languages(renderer, audience, kind):
    en = renderer.render(_context(audience, kind, "en"))
    es = renderer.render(_context(audience, kind, "es"))
    for r in (en, es):
        assert r.subject and "\n" not in r.subject
        assert "https://portal.example/t/TOKEN" in r.text
        assert 'href="https://portal.example/t/TOKEN"' in r.html
        assert "{{" not in r.text + r.html and "%(" not in r.text + r.html
        # Escaped in HTML, as-is in text.
        assert "Riverside &amp; &lt;Sons&gt;" in r.html and "<Sons>" not in r.html
    # Every line a person reads is translated: no English sentence survives in Spanish.
    assert en.subject != es.subject
    en_lines = {line for line in en.text.splitlines() if len(line) > 25 and "http" not in line}
    assert not en_lines & set(es.text.splitlines())
    assert '<html lang="es">' in es.html


def test_patient_footer_has_unsubscribe_and_emergency_lines(renderer):
    r = renderer.render(_context("patient", Kind.NEW_RESULT, "en"))
    assert "https://portal.example/u/UNSUB" in r.text
    assert "call 911" in r.text
    assert r.subject == "3 new results are available"


def test_plurals_and_counts(renderer):
    one = dataclasses.replace(_context("patient", Kind.NEW_MESSAGE, "es"), count=1)
    assert renderer.render(one).subject == "Tiene un mensaje seguro nuevo"
    digest = renderer.render(_context("staff", Kind.STAFF_DIGEST, "en"))
    assert digest.subject == "Urgent: 3 new messages in Refills"
    assert "1 is marked urgent." in digest.text
    calm = dataclasses.replace(_context("staff", Kind.STAFF_DIGEST, "en"), urgent_count=0)
    assert renderer.render(calm).subject == "3 new messages in Refills"


def test_the_context_has_no_field_for_phi():
    names = {f.name for f in dataclasses.fields(EmailContext)}
    for phi in ("name", "given_name", "family_name", "subject", "body", "result", "email", "dob"):
        assert phi not in names


def test_brand_colour_must_be_plain_hex():
    assert brand_color({"color": "#12ab9F"}) == "#12ab9F"
    assert brand_color({"color": "red;background:url(x)"}) == "#1f5f8b"
    assert brand_color({}) == "#1f5f8b"


def test_wire_format_keeps_identifiers_on_one_line_and_body_lines_short():
    from datetime import UTC, datetime

    from gateway.outbound import headers

    rendered = Renderer().render(_context("patient", Kind.NEW_MESSAGE, "en"))
    domain = "a-rather-long-sending-domain-name.clinic.example"
    msg_id = headers.message_id("f" * 32, domain)
    data = headers.build(
        rendered,
        from_name="Riverside",
        from_address=f"notifications@{domain}",
        to="p@example.org",
        msg_id=msg_id,
        date=datetime(2026, 3, 2, tzinfo=UTC),
        unsubscribe_link="https://portal.example/u/" + "x" * 40,
    )
    assert f"\r\nMessage-ID: {msg_id}\r\n".encode() in data
    _head, _, body = data.partition(b"\r\n\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in body.split(b"\r\n")) <= 76

"""Seams between areas: what one part writes, another must be able to read."""

from __future__ import annotations

import pytest

from gateway.outbound.render import EmailContext, Renderer
from gateway.portal import terms
from handlers.registration import agreed_terms_version


@pytest.mark.parametrize(("lang", "agree"), [("en", "I agree"), ("es", "Acepto")])
def test_i_agree_reply_to_the_invitation_names_the_current_terms(lang: str, agree: str):
    rendered = Renderer().render(
        EmailContext(
            audience="patient",
            kind="registration_invitation",
            lang=lang,
            clinic_name="Riverside",
            link="http://127.0.0.1/r/x",
        )
    )
    quoted = "\n".join("> " + line for line in rendered.text.splitlines())
    reply = f"{agree}\n\nOn Monday the clinic wrote:\n{quoted}\n"
    assert agreed_terms_version(reply, agree) == terms.CURRENT
    # Without the words, the quoted version alone agrees to nothing.
    assert agreed_terms_version(reply, "Thanks") is None

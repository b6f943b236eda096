"""``/u/<token>``: switching off one optional kind of email, from a link or in one click.

``GET`` and ``HEAD`` only show a page (mail scanners prefetch links; nothing changes).
``POST`` records the choice in ``Patient.notification_prefs`` (``{"new_message": false}``),
whether it comes from the page's button or from a mail client's RFC 8058 one-click request
(``List-Unsubscribe=One-Click``, sent without cookies). The unguessable token in the path is
what authorises the POST, which is why this form carries no session CSRF field.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment

from gateway import audit, tokens
from gateway.i18n import LANGUAGES, gettext_for
from gateway.models import Patient, Token
from gateway.outbound.notify import OPTIONAL_KINDS
from gateway.web.deps import services_of

router = APIRouter(include_in_schema=False)

TEMPLATE = "web/unsubscribe.html.j2"


def _page(
    request: Request, *, state: str, lang: str, kind: str = "", status_code: int = 200
) -> HTMLResponse:
    env = request.app.state.templates
    assert isinstance(env, Environment)
    ctx: dict[str, Any] = {
        **gettext_for(lang if lang in LANGUAGES else "en"),
        "current_path": "/",  # never echo the token into the language switch
        "state": state,
        "kind": kind,
        "action": request.url.path,
    }
    response = HTMLResponse(env.get_template(TEMPLATE).render(ctx), status_code=status_code)
    response.headers["cache-control"] = "no-store"
    return response


async def _lookup(request: Request, token: str, *, consume: bool) -> tuple[Token, Patient] | None:
    services = services_of(request)
    now = services.clock.now()
    async with services.transaction() as session:
        row = await tokens.peek(session, token, "unsubscribe", now)
        kind = str(row.data.get("kind", "")) if row is not None else ""
        if row is None or kind not in OPTIONAL_KINDS or row.subject_kind != "patient":
            return None
        patient = await session.get(Patient, row.subject_id)
        if patient is None:
            return None
        if consume:
            await tokens.consume(session, token, "unsubscribe", now)
            prefs = dict(patient.notification_prefs or {})
            prefs[kind] = False
            # A new dict, so the JSON column is seen as changed.
            patient.notification_prefs = prefs
            await audit.record(
                session,
                f"patient:{patient.id}",
                "patient.unsubscribe",
                "patient",
                patient.id,
                kind=kind,
                token_id=row.id,
            )
        return row, patient


@router.api_route("/u/{token}", methods=["GET", "HEAD"])
async def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    found = await _lookup(request, token, consume=False)
    if found is None:
        return _page(request, state="invalid", lang="en", status_code=404)
    row, patient = found
    return _page(request, state="confirm", lang=patient.language, kind=str(row.data["kind"]))


@router.post("/u/{token}")
async def unsubscribe(request: Request, token: str) -> HTMLResponse:
    services = services_of(request)
    found = await _lookup(request, token, consume=True)
    result = "ok" if found is not None else "invalid"
    services.metrics.token_consumptions.labels(purpose="unsubscribe", result=result).inc()
    if found is None:
        return _page(request, state="invalid", lang="en", status_code=404)
    row, patient = found
    return _page(request, state="done", lang=patient.language, kind=str(row.data["kind"]))

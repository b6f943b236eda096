"""The signed-in patient's pages under ``/portal``: inbox, threads, typed requests with the
urgent-content screen, results, the education library, preferences, and the requests of other
clinics to connect (which only the patient can approve).

Routes only parse forms and render; the rules live in :mod:`gateway.portal`. URLs carry ids
only, page titles are generic ("Message", "Result"), never a subject or a test name.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic
from gateway.models.org import REQUEST_TYPES
from gateway.outbound.notify import OPTIONAL_KINDS
from gateway.portal import connections, library, patients, requests, results
from gateway.portal import inbox as inbox_mod
from gateway.portal.accounts import Principal
from gateway.portal.signup import FormProblem
from gateway.web import sessions
from gateway.web.deps import ShortParam, TextParam, services_of
from gateway.web.pages import language_of, render
from gateway.web.sessions import require_patient

router = APIRouter(include_in_schema=False)
CSRF = [Depends(sessions.check_csrf)]
Patient = Depends(require_patient)
# Form fields that are ours, not the patient's: never echoed back into a re-post.
_CONTROL_FIELDS = {"csrf_token", "confirm_urgent"}


async def _lang(request: Request, principal: Principal) -> str:
    services = services_of(request)
    async with services.sessions() as s:
        patient = await patients.get_patient(s, principal.id)
    return language_of(request, patient.language)


def _not_found(request: Request, lang: str) -> HTMLResponse:
    return render(request, "portal/not-found.html.j2", status_code=404, lang=lang)


@router.get("/portal")
async def inbox(
    request: Request, principal: Principal = Patient, sent: ShortParam = ""
) -> HTMLResponse:
    box = await inbox_mod.inbox(services_of(request), principal.id)
    lang = language_of(request, box.patient.language)
    async with services_of(request).sessions() as s:
        released = await results.released_for(s, principal.id, services_of(request).clock.now())
        asking = await connections.pending_for(s, principal.id)
    assigned = await library.assigned_to(services_of(request), principal.id, lang)
    return render(
        request,
        "portal/inbox.html.j2",
        lang=lang,
        box=box,
        connections=asking,
        local_time=inbox_mod.local_time,
        new_results=sum(1 for r in released if r.patient_read_at is None),
        assigned=[a for a in assigned if a.assignment.read_at is None],
        sent=sent,
    )


@router.get("/portal/threads/{thread_id}")
async def thread(
    request: Request, thread_id: str, principal: Principal = Patient, sent: ShortParam = ""
) -> HTMLResponse:
    lang = await _lang(request, principal)
    view = await inbox_mod.read_thread(services_of(request), principal.id, thread_id)
    if view is None:
        return _not_found(request, lang)
    return render(
        request,
        "portal/thread.html.j2",
        lang=lang,
        view=view,
        local_time=inbox_mod.local_time,
        problem=None,
        flags=[],
        body="",
        sent=sent,
    )


@router.get("/portal/threads/{thread_id}/reply")
async def reply_page(thread_id: str) -> Response:
    """A reply page re-requested by GET (e.g. the language switch): back to the thread."""
    target = f"/portal/threads/{thread_id}" if thread_id.isalnum() else "/portal"
    return RedirectResponse(target, status_code=303)


@router.post("/portal/threads/{thread_id}/reply", dependencies=CSRF)
async def reply(request: Request, thread_id: str, principal: Principal = Patient) -> Response:
    services = services_of(request)
    lang = await _lang(request, principal)
    form = await request.form()
    body = form.get("message")
    body = body.strip() if isinstance(body, str) else ""
    confirmed = form.get("confirm_urgent") == "yes"
    view = await inbox_mod.read_thread(services, principal.id, thread_id)
    if view is None:
        return _not_found(request, lang)
    if not body:
        return render(
            request,
            "portal/thread.html.j2",
            status_code=400,
            lang=lang,
            view=view,
            local_time=inbox_mod.local_time,
            problem=FormProblem("message", "required"),
            flags=[],
            body="",
            sent="",
        )
    flags = await requests.red_flags(services, principal.id, [body])
    if flags and not confirmed:
        return await _urgent_page(
            request, principal, lang, f"/portal/threads/{thread_id}/reply", form, flags
        )
    try:
        await requests.reply(services, principal.id, thread_id, body, urgent_flag=bool(flags))
    except UsageError:
        return render(
            request,
            "portal/thread.html.j2",
            status_code=400,
            lang=lang,
            view=view,
            local_time=inbox_mod.local_time,
            problem=FormProblem("message", "long"),
            flags=[],
            body=body,
            sent="",
        )
    return RedirectResponse(f"/portal/threads/{thread_id}", status_code=303)


async def _urgent_page(
    request: Request, principal: Principal, lang: str, action: str, form: Any, flags: list[str]
) -> HTMLResponse:
    """Stop and tell the patient to call; they may still send (the thread is flagged)."""
    hidden = [(k, v) for k, v in form.multi_items() if k not in _CONTROL_FIELDS]
    services = services_of(request)
    async with services.sessions() as s:
        patient = await patients.get_patient(s, principal.id)
        clinic = await requests.home_clinic(services, s, patient)
    return render(
        request,
        "portal/urgent.html.j2",
        lang=lang,
        action=action,
        hidden=hidden,
        flags=flags,
        clinic=clinic,
    )


# -- compose ---------------------------------------------------------------------------------


@router.get("/portal/compose")
async def compose_menu(request: Request, principal: Principal = Patient) -> HTMLResponse:
    lang = await _lang(request, principal)
    return render(request, "portal/compose-menu.html.j2", lang=lang, types=REQUEST_TYPES)


async def _compose_page(
    request: Request,
    principal: Principal,
    kind: str,
    lang: str,
    status: int = 200,
    problem: FormProblem | None = None,
    values: dict[str, Any] | None = None,
) -> HTMLResponse:
    async with services_of(request).sessions() as s:
        patient = await patients.get_patient(s, principal.id)
    return render(
        request,
        "portal/compose.html.j2",
        status_code=status,
        lang=lang,
        kind=kind,
        problem=problem,
        values=values or {},
        medications=requests.medications_of(patient),
        days=requests.DAYS,
        times=requests.TIMES,
        purposes=requests.IMMUNIZATION_PURPOSES,
    )


@router.get("/portal/compose/{kind}")
async def compose_form(request: Request, kind: str, principal: Principal = Patient) -> HTMLResponse:
    lang = await _lang(request, principal)
    if kind not in REQUEST_TYPES:
        return _not_found(request, lang)
    return await _compose_page(request, principal, kind, lang)


@router.post("/portal/compose/{kind}", dependencies=CSRF)
async def compose(request: Request, kind: str, principal: Principal = Patient) -> Response:
    services = services_of(request)
    lang = await _lang(request, principal)
    if kind not in REQUEST_TYPES:
        return _not_found(request, lang)
    form = await request.form()
    values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    lists = {k: [v for v in form.getlist(k) if isinstance(v, str)] for k in ("days", "times")}
    values.update(lists)
    async with services.sessions() as s:
        patient = await patients.get_patient(s, principal.id)
    try:
        draft = requests.build_draft(kind, values, lists, patient)
    except FormProblem as problem:
        return await _compose_page(request, principal, kind, lang, 400, problem, values)
    flags = await requests.red_flags(services, principal.id, draft.texts())
    if flags and form.get("confirm_urgent") != "yes":
        return await _urgent_page(request, principal, lang, f"/portal/compose/{kind}", form, flags)
    try:
        thread = await requests.send(services, principal.id, draft, urgent_flag=bool(flags))
    except UsageError:
        too_long = FormProblem("message", "long")
        return await _compose_page(request, principal, kind, lang, 400, too_long, values)
    return RedirectResponse(f"/portal/threads/{thread.id}?sent=1", status_code=303)


# -- results ---------------------------------------------------------------------------------


@router.get("/portal/results")
async def results_list(request: Request, principal: Principal = Patient) -> HTMLResponse:
    services = services_of(request)
    lang = await _lang(request, principal)
    async with services.sessions() as s:
        rows = await results.released_for(s, principal.id, services.clock.now())
    return render(request, "portal/results.html.j2", lang=lang, rows=rows)


@router.get("/portal/results/{result_id}")
async def result_view(
    request: Request, result_id: str, principal: Principal = Patient
) -> HTMLResponse:
    lang = await _lang(request, principal)
    try:
        row = await results.read_result(services_of(request), principal.id, result_id)
    except NotFoundError:
        return _not_found(request, lang)
    return render(request, "portal/result.html.j2", lang=lang, row=row)


# -- library ---------------------------------------------------------------------------------


@router.get("/portal/library")
async def library_list(
    request: Request,
    principal: Principal = Patient,
    q: TextParam = "",
    topic: ShortParam = "",
) -> HTMLResponse:
    services = services_of(request)
    lang = await _lang(request, principal)
    found = await library.search(services, language=lang, query=q, topic=topic)
    assigned = await library.assigned_to(services, principal.id, lang)
    return render(
        request,
        "portal/library.html.j2",
        lang=lang,
        articles=found,
        assigned=assigned,
        q=q,
        topic=topic,
        topics=library.TOPICS,
    )


@router.get("/portal/library/{slug}")
async def article(request: Request, slug: str, principal: Principal = Patient) -> HTMLResponse:
    services = services_of(request)
    lang = await _lang(request, principal)
    try:
        found = await library.get_article(services, slug, lang)
    except NotFoundError:
        return _not_found(request, lang)
    await library.mark_read(services, principal.id, slug)
    return render(request, "portal/article.html.j2", lang=lang, article=found)


# -- preferences -----------------------------------------------------------------------------


@router.get("/portal/preferences")
async def preferences_form(
    request: Request, principal: Principal = Patient, saved: ShortParam = ""
) -> HTMLResponse:
    async with services_of(request).sessions() as s:
        patient = await patients.get_patient(s, principal.id)
    return render(
        request,
        "portal/preferences.html.j2",
        lang=language_of(request, patient.language),
        wanted=inbox_mod.wanted_kinds(patient),
        kinds=sorted(str(k) for k in OPTIONAL_KINDS),
        language=patient.language,
        saved=saved,
    )


@router.post("/portal/preferences", dependencies=CSRF)
async def preferences(request: Request, principal: Principal = Patient) -> Response:
    services = services_of(request)
    form = await request.form()
    kinds = {v for v in form.getlist("kinds") if isinstance(v, str)}
    language = form.get("language")
    language = language if language in ("en", "es") else "en"
    await inbox_mod.save_preferences(services, principal.id, kinds=kinds, language=language)
    # The page language follows the new choice at once.
    sessions.queue_cookie(
        request,
        sessions.cookie_header(services, sessions.LANG_COOKIE, language, max_age=365 * 24 * 3600),
    )
    return RedirectResponse("/portal/preferences?saved=1", status_code=303)


# -- other clinics asking to connect ---------------------------------------------------------


@router.get("/portal/connections")
async def connections_page(
    request: Request, principal: Principal = Patient, done: ShortParam = ""
) -> HTMLResponse:
    async with services_of(request).sessions() as s:
        patient = await patients.get_patient(s, principal.id)
        rows = await connections.pending_for(s, principal.id)
        enrolment = await patients.current_enrolment(s, principal.id)
        home = await s.get(Clinic, enrolment.clinic_id) if enrolment else None
    return render(
        request,
        "portal/connections.html.j2",
        lang=language_of(request, patient.language),
        rows=rows,
        home=home,
        done=done if done in ("approved", "declined") else "",
    )


@router.post("/portal/connections/{request_id}", dependencies=CSRF)
async def decide_connection(
    request: Request, request_id: str, principal: Principal = Patient
) -> Response:
    """Approve (the patient moves to the asking clinic) or decline (nothing moves)."""
    lang = await _lang(request, principal)
    form = await request.form()
    decision = form.get("decision")
    if decision not in ("approve", "decline"):
        return RedirectResponse("/portal/connections", status_code=303)
    try:
        row = await connections.decide(
            services_of(request),
            patient_id=principal.id,
            request_id=request_id,
            approve=decision == "approve",
        )
    except NotFoundError:
        return _not_found(request, lang)
    return RedirectResponse(f"/portal/connections?done={row.state}", status_code=303)

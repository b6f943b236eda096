"""The staff workspace: pool queues, threads, replies, notes, results, and clinic set-up.

Behind ``require_staff`` (portal helper's sessions): staff see their own clinic only, an
operator any clinic. Queues are sorted urgent first, then by SLA deadline. Every read of a
thread and every write is audited (ids only). Page titles never carry PHI (they end up in
browser history); the thread page shows the patient's identity because staff must know whom
they are answering, and only to signed-in staff of that clinic.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.admin.clinics import list_clinics, set_urgent_sla
from gateway.careteam import digests, pools, sla, threads, workspace
from gateway.careteam.staff import list_staff
from gateway.errors import CarebridgeError, UsageError
from gateway.models import Clinic, Staff, Thread
from gateway.models.org import REQUEST_TYPES
from gateway.portal.accounts import Principal
from gateway.services import Services
from gateway.web import sessions
from gateway.web.deps import ClinicParam, services_of
from gateway.web.pages import render

router = APIRouter(prefix="/staff", include_in_schema=False)
CSRF = [Depends(sessions.check_csrf)]
AnyStaff = Annotated[Principal, Depends(sessions.require_staff())]
ClinicAdmin = Annotated[Principal, Depends(sessions.require_staff("clinic_admin", "operator"))]
Clinician = Annotated[
    Principal, Depends(sessions.require_staff("provider", "nurse", "clinic_admin", "operator"))
]


async def _me(s: AsyncSession, principal: Principal) -> Staff:
    me = await workspace.staff_member(s, principal.id)
    if me is None or not me.active:
        raise HTTPException(status_code=403, detail="Your account is not active.")
    return me


async def _clinic_for(s: AsyncSession, me: Staff, slug: str) -> Clinic:
    """The clinic a page is about: always the staff member's own unless an operator."""
    clinic = await workspace.clinic_for(s, me, await workspace.clinic_id_by_slug(s, slug))
    if clinic is None:
        raise HTTPException(status_code=404, detail="No such clinic.")
    return clinic


async def _thread(s: AsyncSession, me: Staff, thread_id: str) -> Thread:
    thread = await threads.thread_for_staff(s, me, thread_id)
    if thread is None:
        raise HTTPException(status_code=404, detail="No such thread.")
    return thread


# -- home and queues ---------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def home(request: Request, principal: AnyStaff, clinic: ClinicParam = "") -> Response:
    services = services_of(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        if me.role == "operator" and not clinic:
            clinics = list(await list_clinics(s))
            return render(request, "staff/clinics.html.j2", clinics=clinics, me=me)
        here = await _clinic_for(s, me, clinic)
        rows = await workspace.pool_summaries(s, here.id, me.id, services.clock.now())
        await audit.record(s, principal.actor, "staff.home_view", "clinic", here.id)
    return render(request, "staff/home.html.j2", me=me, clinic=here, rows=rows)


@router.get("/pools/{pool_id}", response_class=HTMLResponse)
async def pool_queue(
    request: Request, pool_id: str, principal: AnyStaff, closed: bool = False
) -> Response:
    services = services_of(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        pool = await workspace.pool_for_staff(s, me, pool_id)
        if pool is None:
            raise HTTPException(status_code=404, detail="No such pool.")
        queue = await workspace.pool_queue(s, pool, services.clock.now(), include_closed=closed)
        await audit.record(s, principal.actor, "pool.view", "pool", pool.id, rows=len(queue.rows))
        return render(
            request,
            "staff/queue.html.j2",
            me=me,
            pool=pool,
            clinic=queue.clinic,
            rows=queue.rows,
            closed=closed,
        )


# -- a thread ----------------------------------------------------------------------------


async def _thread_page(
    request: Request,
    s: AsyncSession,
    services: Services,
    me: Staff,
    thread: Thread,
    *,
    error: str | None = None,
    draft: str = "",
    quick: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    view = await workspace.thread_view(s, thread)
    if quick and not draft:
        chosen = next((r for r in view.quick_replies if r.id == quick), None)
        draft = chosen.body if chosen else ""
    await audit.record(s, f"staff:{me.id}", "thread.view", "thread", thread.id)
    return render(
        request,
        "staff/thread.html.j2",
        status_code=status_code,
        me=me,
        thread=thread,
        clinic=view.clinic,
        patient=view.patient,
        pool=view.pool,
        messages=view.messages,
        names=view.names,
        colleagues=view.colleagues,
        quick_replies=view.quick_replies,
        held_results=view.held_results,
        draft=draft,
        error=error,
        local=lambda when: workspace.local(when, view.clinic),
    )


@router.get("/threads/{thread_id}", response_class=HTMLResponse)
async def thread_page(
    request: Request, thread_id: str, principal: AnyStaff, quick: ClinicParam = ""
) -> Response:
    services = services_of(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        thread = await _thread(s, me, thread_id)
        return await _thread_page(request, s, services, me, thread, quick=quick)


def _back(thread_id: str) -> RedirectResponse:
    return RedirectResponse(f"/staff/threads/{thread_id}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


@router.post("/threads/{thread_id}/reply", dependencies=CSRF)
async def reply(request: Request, thread_id: str, principal: AnyStaff) -> Response:
    """Answer the patient (stops the SLA clock) or, with ``internal``, add a staff-only note."""
    services = services_of(request)
    form = await _form(request)
    body, internal = form.get("body", ""), form.get("internal") == "1"
    async with services.sessions() as s, s.begin():
        me = await _me(s, principal)
        thread = await _thread(s, me, thread_id)
        try:
            async with s.begin_nested():
                await threads.post_staff_message(
                    s, services, thread=thread, staff=me, body=body, internal=internal
                )
        except CarebridgeError as exc:
            return await _thread_page(
                request, s, services, me, thread, error=str(exc), draft=body, status_code=422
            )
    return _back(thread_id)


@router.post("/threads/{thread_id}/assign", dependencies=CSRF)
async def assign(request: Request, thread_id: str, principal: AnyStaff) -> Response:
    """Claim (``staff_id`` = me), hand to a colleague, or release (empty)."""
    services = services_of(request)
    form = await _form(request)
    async with services.sessions() as s, s.begin():
        me = await _me(s, principal)
        thread = await _thread(s, me, thread_id)
        wanted = form.get("staff_id", "")
        assignee = await workspace.staff_member(s, wanted) if wanted else None
        if wanted and assignee is None:
            raise HTTPException(status_code=422, detail="Choose a colleague from the list.")
        try:
            async with s.begin_nested():
                await threads.assign(s, services, thread=thread, staff=me, assignee=assignee)
        except CarebridgeError as exc:
            return await _thread_page(
                request, s, services, me, thread, error=str(exc), status_code=422
            )
    return _back(thread_id)


@router.post("/threads/{thread_id}/urgent", dependencies=CSRF)
async def mark_urgent(request: Request, thread_id: str, principal: AnyStaff) -> Response:
    """Flag a thread urgent: the urgent deadline, the top of the queue, the pool told now."""
    services = services_of(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        thread = await _thread(s, me, thread_id)
        await threads.mark_urgent(s, services, thread=thread, staff=me)
    return _back(thread_id)


@router.post("/threads/{thread_id}/close", dependencies=CSRF)
async def close(request: Request, thread_id: str, principal: AnyStaff) -> Response:
    services = services_of(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        thread = await _thread(s, me, thread_id)
        await threads.close_thread(s, services, thread=thread, staff=me)
    return _back(thread_id)


@router.post("/results/{result_id}/release", dependencies=CSRF)
async def release(request: Request, result_id: str, principal: Clinician) -> Response:
    """Release a held result to the patient (queues the PHI-free "new result" notice)."""
    from gateway.portal.results import release_result

    services = services_of(request)
    form = await _form(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        result = await workspace.result_for_staff(s, me, result_id)
        if result is None:
            raise HTTPException(status_code=404, detail="No such result.")
        if result.sensitive and me.role not in ("provider", "operator"):
            raise HTTPException(status_code=403, detail="A provider must release this result.")
        await release_result(s, services, result, actor=principal.actor)
    back = form.get("thread_id", "")
    return _back(back) if back else RedirectResponse("/staff", status_code=303)


# -- clinic set-up (clinic admins) ---------------------------------------------------------


async def _setup_page(
    request: Request,
    s: AsyncSession,
    me: Staff,
    clinic: Clinic,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    all_pools = list(await pools.pools_of(s, clinic.id))
    members = {p.id: list(await pools.members_of(s, p.id)) for p in all_pools}
    staff = list(await list_staff(s, clinic))
    return render(
        request,
        "staff/setup.html.j2",
        status_code=status_code,
        me=me,
        clinic=clinic,
        rules=await pools.rules_of(s, clinic.id),
        unrouted=await pools.unrouted_types(s, clinic.id),
        pools=all_pools,
        members=members,
        staff=staff,
        request_types=[*REQUEST_TYPES, "*"],
        quick_replies=list(await pools.quick_replies(s, clinic.id)),
        hours=sla.format_hours(clinic.business_hours or {}),
        unwatched=await pools.unwatched_pool_ids(s, clinic.id),
        fallback=await digests.fallback_recipient(s, clinic),
        error=error,
    )


@router.get("/setup", response_class=HTMLResponse)
async def setup(request: Request, principal: ClinicAdmin, clinic: ClinicParam = "") -> Response:
    services = services_of(request)
    async with services.transaction() as s:
        me = await _me(s, principal)
        here = await _clinic_for(s, me, clinic)
        await audit.record(s, principal.actor, "setup.view", "clinic", here.id)
        return await _setup_page(request, s, me, here)


def _hours(value: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    if not value.isdigit():
        raise UsageError("SLA hours must be a whole number (or empty: one business day)")
    return int(value)


async def _apply(
    s: AsyncSession, me: Staff, clinic: Clinic, action: str, f: dict[str, str]
) -> None:
    actor = f"staff:{me.id}"
    if action == "add-rule":
        await pools.add_rule(
            s,
            clinic_id=clinic.id,
            request_type=f.get("request_type", ""),
            pool_id=f.get("pool_id", ""),
            sla_hours=_hours(f.get("sla_hours", "")),
            actor=actor,
        )
    elif action in ("rule-up", "rule-down"):
        offset = -1 if action == "rule-up" else 1
        await pools.move_rule(
            s, clinic_id=clinic.id, rule_id=f.get("rule_id", ""), offset=offset, actor=actor
        )
    elif action == "update-rule":
        await pools.update_rule(
            s,
            clinic_id=clinic.id,
            rule_id=f.get("rule_id", ""),
            pool_id=f.get("pool_id", ""),
            sla_hours=_hours(f.get("sla_hours", "")),
            actor=actor,
        )
    elif action == "remove-rule":
        await pools.remove_rule(s, clinic_id=clinic.id, rule_id=f.get("rule_id", ""), actor=actor)
    elif action == "add-pool":
        await pools.add_pool(
            s, clinic_id=clinic.id, slug=f.get("slug", ""), name=f.get("name", ""), actor=actor
        )
    elif action in ("add-member", "remove-member", "supervisor"):
        pool = await pools.get_pool(s, clinic.id, f.get("pool_id", ""))
        staff_id = f.get("staff_id", "")
        if action == "add-member":
            await pools.add_member(s, pool=pool, staff_id=staff_id, actor=actor)
        elif action == "remove-member":
            await pools.remove_member(s, pool=pool, staff_id=staff_id, actor=actor)
        else:
            await pools.set_supervisor(s, pool=pool, staff_id=staff_id or None, actor=actor)
    elif action == "calendar":
        await sla.update_calendar(
            s,
            clinic,
            timezone=f.get("timezone", "").strip() or "UTC",
            business_hours=sla.hours_from_text({d: f.get(f"hours_{d}", "") for d in sla.DAYS}),
            holidays=[line.strip() for line in f.get("holidays", "").splitlines() if line.strip()],
            holiday_country=f.get("holiday_country", ""),
            actor=actor,
        )
        await workspace.set_staff_email_replies(
            s, clinic, enabled=f.get("staff_email_replies") == "1", actor=actor
        )
    elif action == "fallback":
        await pools.set_fallback(s, clinic, staff_id=f.get("staff_id", "") or None, actor=actor)
    elif action == "urgent-sla":
        minutes = f.get("urgent_sla_minutes", "").strip()
        if not minutes.isdigit():
            raise UsageError("the urgent reply deadline must be a whole number of minutes")
        await set_urgent_sla(s, clinic, minutes=int(minutes), actor=actor)
    elif action == "add-quick-reply":
        await pools.add_quick_reply(
            s, clinic_id=clinic.id, title=f.get("title", ""), body=f.get("body", ""), actor=actor
        )
    elif action == "remove-quick-reply":
        await pools.remove_quick_reply(
            s, clinic_id=clinic.id, reply_id=f.get("reply_id", ""), actor=actor
        )
    else:
        raise UsageError("unknown action")


@router.post("/setup", dependencies=CSRF)
async def setup_change(request: Request, principal: ClinicAdmin) -> Response:
    services = services_of(request)
    form = await _form(request)
    async with services.sessions() as s, s.begin():
        me = await _me(s, principal)
        here = await _clinic_for(s, me, form.get("clinic", ""))
        try:
            async with s.begin_nested():
                await _apply(s, me, here, form.get("action", ""), form)
        except CarebridgeError as exc:
            return await _setup_page(request, s, me, here, error=str(exc), status_code=422)
    suffix = f"?clinic={here.slug}" if me.role == "operator" else ""
    return RedirectResponse(f"/staff/setup{suffix}", status_code=303)


# -- my notification preferences -----------------------------------------------------------


@router.get("/preferences", response_class=HTMLResponse)
async def preferences(request: Request, principal: AnyStaff) -> Response:
    async with services_of(request).transaction() as s:
        me = await _me(s, principal)
        return render(request, "staff/preferences.html.j2", me=me, modes=digests.DIGEST_MODES)


@router.post("/preferences", dependencies=CSRF)
async def save_preferences(request: Request, principal: AnyStaff) -> Response:
    """Digest timing, urgent-only digests, and whether SLA breaches reach me as on-call."""
    form = await _form(request)
    mode = form.get("digest", "immediate")
    if mode not in digests.DIGEST_MODES:
        raise HTTPException(status_code=422, detail="Choose one of the listed digest options.")
    async with services_of(request).transaction() as s:
        me = await _me(s, principal)
        await workspace.save_preferences(
            s,
            me,
            digest=mode,
            urgent_only=form.get("urgent_only") == "1",
            on_call=form.get("on_call") == "1",
            actor=principal.actor,
        )
    return RedirectResponse("/staff/preferences", status_code=303)

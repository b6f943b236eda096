"""The admin pages under ``/admin`` for operators (every clinic) and clinic admins (their own).

Dashboard (queue, deferrals, delivery latency and bounce-rate charts, inbound volume, SLA
breaches, enrolment funnel, deliverability problems), the audit log with filters, and the
relay-domain wizard. Every page shows ids, counts and states only: never a patient's name,
address or message. Every POST is CSRF-checked and audited (by the functions it calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin import dashboard, domains
from gateway.admin.clinics import get_clinic, list_clinics
from gateway.admin.dashboard import AuditFilter, Scope
from gateway.errors import CarebridgeError, NotFoundError
from gateway.models import Clinic
from gateway.portal.accounts import Principal
from gateway.web import charts, sessions
from gateway.web.deps import ClinicParam, services_of
from gateway.web.pages import render

router = APIRouter(prefix="/admin", include_in_schema=False)
ADMIN_ROLES = ("operator", "clinic_admin")
require_admin = sessions.require_staff(*ADMIN_ROLES)
require_operator = sessions.require_staff("operator")
CSRF = [Depends(sessions.check_csrf)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]


@dataclass(frozen=True)
class View:
    """Whose data a page shows: one clinic, or every clinic for an operator."""

    principal: Principal
    clinic: Clinic | None
    clinics: list[Clinic]

    @property
    def scope(self) -> Scope:
        return Scope(self.clinic.id if self.clinic else None)

    @property
    def operator(self) -> bool:
        return self.principal.role == "operator"

    @property
    def query(self) -> str:
        """Keeps an operator's chosen clinic across the admin pages' links."""
        return f"?clinic={self.clinic.slug}" if self.operator and self.clinic else ""


async def _view(session: AsyncSession, principal: Principal, slug: str | None) -> View:
    if principal.role != "operator":
        # A clinic admin only ever sees their own clinic, whatever the URL says.
        clinic = await session.get(Clinic, principal.clinic_id) if principal.clinic_id else None
        if clinic is None:
            raise HTTPException(status_code=403, detail="Your account has no clinic.")
        return View(principal, clinic, [clinic])
    every = list(await list_clinics(session))
    if not slug:
        return View(principal, None, every)
    try:
        return View(principal, await get_clinic(session, slug), every)
    except NotFoundError:
        raise HTTPException(status_code=404, detail="No such clinic.") from None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none waiting"
    return charts.seconds(seconds)


@router.get("", response_class=HTMLResponse)
async def dashboard_page(
    request: Request, principal: AdminPrincipal, clinic: ClinicParam = ""
) -> Response:
    services = services_of(request)
    now = services.clock.now()
    async with services.sessions() as s:
        view = await _view(s, principal, clinic)
        scope = view.scope
        depth = await dashboard.queue_depth(s, scope)
        oldest = await dashboard.oldest_waiting(s, scope)
        days = await dashboard.daily(s, scope, now)
        data: dict[str, Any] = {
            "depth": depth,
            "totals": dashboard.totals_by_state(depth),
            "clinic_rows": sorted({slug for slug, _ in depth}),
            "oldest_age": _age((now - oldest).total_seconds() if oldest else None),
            "reasons": await dashboard.deferral_reasons(s, scope),
            "days": days,
            "held": await dashboard.quarantine_held(s, scope),
            "breaches": await dashboard.sla_breaches(s, scope),
            "unwatched": await dashboard.unwatched_requests(s, scope),
            "funnel": await dashboard.funnel(s, scope),
            "problems": await dashboard.deliverability_problems(s, scope),
        }
    labels = [d.day.strftime("%m-%d") for d in days]
    data["latency_chart"] = charts.line_chart(
        "latency",
        "Delivery latency per day (enqueue to relay acceptance)",
        labels,
        [
            charts.Series("median", [d.latency_p50 for d in days]),
            charts.Series("95th percentile", [d.latency_p95 for d in days]),
        ],
        unit=charts.seconds,
    )
    data["bounce_chart"] = charts.line_chart(
        "bounces",
        "Bounce rate per day",
        labels,
        [charts.Series("bounced / (sent + bounced)", [d.bounce_rate for d in days])],
        unit=charts.percent,
    )
    data["volume_chart"] = charts.line_chart(
        "volume",
        "Messages per day",
        labels,
        [
            charts.Series("sent", [float(d.sent) for d in days]),
            charts.Series("inbound", [float(d.inbound) for d in days]),
            charts.Series("quarantined", [float(d.quarantined) for d in days]),
        ],
        unit=lambda v: f"{v:.0f}",
    )
    return render(request, "admin/dashboard.html.j2", view=view, **data)


def _parse_day(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{field} must be a date as YYYY-MM-DD") from None


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    principal: AdminPrincipal,
    clinic: ClinicParam = "",
    actor: Annotated[str, Query(max_length=80)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    object_type: Annotated[str, Query(max_length=40)] = "",
    object_id: Annotated[str, Query(max_length=64)] = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    # A sequence number from the "older" link; bounded so the database never overflows.
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> Response:
    services = services_of(request)
    form = {
        "actor": actor[:80],
        "action": action[:64],
        "object_type": object_type[:40],
        "object_id": object_id[:64],
        "since": since[:10],
        "until": until[:10],
    }
    error = None
    try:
        start, end = _parse_day(since, "From"), _parse_day(until, "Until")
        end = end + timedelta(days=1) if end else None
    except (ValueError, OverflowError) as exc:
        start = end = None
        error = str(exc)
    f = AuditFilter(
        actor=form["actor"],
        action=form["action"],
        object_type=form["object_type"],
        object_id=form["object_id"],
        since=start,
        until=end,
        before_seq=before,
    )
    async with services.sessions() as s:
        view = await _view(s, principal, clinic)
        events = [] if error else await dashboard.audit_events(s, view.scope, f, limit=50)
    older = None
    if len(events) == 50:
        params = {k: v for k, v in form.items() if v}
        if view.operator and view.clinic:
            params["clinic"] = view.clinic.slug
        older = "/admin/audit?" + urlencode({**params, "before": events[-1].seq})
    return render(
        request,
        "admin/audit.html.j2",
        status_code=400 if error else 200,
        view=view,
        events=events,
        form=form,
        error=error,
        older=older,
    )


# -- relay domains -------------------------------------------------------------------------
async def _domain_page(
    request: Request,
    view: View,
    *,
    report: domains.CheckReport | None = None,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    services = services_of(request)
    records: list[domains.DnsRecord] = []
    keys: list[Any] = []
    if view.clinic is not None:
        async with services.sessions() as s:
            clinic = await s.get(Clinic, view.clinic.id)
            assert clinic is not None
            keys = await domains.clinic_keys(s, clinic)
            if clinic.sending_domain and clinic.reply_domain:
                try:
                    records = domains.records(services.config, clinic, keys)
                except CarebridgeError:
                    # No keys yet: the form below creates them when the domains are saved.
                    notice = notice or "Save the domains to create the clinic's DKIM keys."
    return render(
        request,
        "admin/domains.html.j2",
        status_code=status_code,
        view=view,
        records=records,
        keys=keys,
        report=report,
        error=error,
        notice=notice,
    )


@router.get("/domains", response_class=HTMLResponse)
async def domains_page(
    request: Request, principal: AdminPrincipal, clinic: ClinicParam = ""
) -> Response:
    async with services_of(request).sessions() as s:
        view = await _view(s, principal, clinic)
    return await _domain_page(request, view)


async def _form_clinic(request: Request, principal: Principal) -> tuple[View, dict[str, str]]:
    form = {k: str(v) for k, v in (await request.form()).items()}
    async with services_of(request).sessions() as s:
        view = await _view(s, principal, form.get("clinic", ""))
    if view.clinic is None:
        raise HTTPException(status_code=400, detail="Choose a clinic first.")
    return view, form


@router.post("/domains", dependencies=CSRF, response_class=HTMLResponse)
async def set_domains(request: Request, principal: AdminPrincipal) -> Response:
    view, form = await _form_clinic(request, principal)
    services = services_of(request)
    assert view.clinic is not None
    try:
        async with services.transaction() as s:
            clinic = await get_clinic(s, view.clinic.slug)
            result = await domains.add_domains(
                s,
                clinic,
                sending_domain=form.get("sending_domain", ""),
                reply_domain=form.get("reply_domain", ""),
                now=services.clock.now(),
                actor=principal.actor,
            )
    except CarebridgeError as exc:
        return await _domain_page(request, view, error=str(exc), status_code=400)
    made = len(result.created_keys)
    return await _domain_page(
        request,
        view,
        notice=f"Domains saved; {made} new DKIM keys. Publish the records below, then check.",
    )


@router.post("/domains/check", dependencies=CSRF, response_class=HTMLResponse)
async def check_domains(request: Request, principal: AdminPrincipal) -> Response:
    view, _ = await _form_clinic(request, principal)
    assert view.clinic is not None
    try:
        report = await domains.check_clinic(
            services_of(request), view.clinic.slug, actor=principal.actor
        )
    except CarebridgeError as exc:
        return await _domain_page(request, view, error=str(exc), status_code=400)
    return await _domain_page(request, view, report=report)


@router.post("/domains/rotate", dependencies=CSRF, response_class=HTMLResponse)
async def rotate(request: Request, principal: AdminPrincipal) -> Response:
    view, form = await _form_clinic(request, principal)
    services = services_of(request)
    assert view.clinic is not None
    finish = form.get("finish") == "1"
    try:
        async with services.transaction() as s:
            clinic = await get_clinic(s, view.clinic.slug)
            fn = domains.finish_rotation if finish else domains.rotate_dkim
            keys = await fn(s, clinic, now=services.clock.now(), actor=principal.actor)
    except CarebridgeError as exc:
        return await _domain_page(request, view, error=str(exc), status_code=400)
    selectors = ", ".join(k.selector for k in keys) or "none"
    notice = (
        f"Retired: {selectors}. Remove their records from DNS."
        if finish
        else f"New selectors {selectors}. Publish them; signing switches once a check sees them."
    )
    return await _domain_page(request, view, notice=notice)


# -- quarantine ----------------------------------------------------------------------------
async def _item_in_view(request: Request, principal: Principal, item_id: str) -> dict[str, Any]:
    """The item's PHI-free summary, or 404 when it is not in this admin's clinic."""
    from gateway.inbound import quarantine

    async with services_of(request).sessions() as s:
        view = await _view(s, principal, "")
        try:
            item, inbound = await quarantine.get_item(s, item_id)
        except NotFoundError:
            raise HTTPException(status_code=404, detail="No such quarantine item.") from None
    if view.clinic is not None and inbound.clinic_id != view.clinic.id:
        raise HTTPException(status_code=404, detail="No such quarantine item.")
    out = quarantine.summary(item, inbound)
    out["detail"] = dashboard.scrub_reason(out["detail"]) if out["detail"] else ""
    return out


@router.get("/quarantine", response_class=HTMLResponse)
async def quarantine_list(
    request: Request,
    principal: AdminPrincipal,
    clinic: ClinicParam = "",
    state: Literal["held", "released", "discarded"] = "held",
) -> Response:
    async with services_of(request).sessions() as s:
        view = await _view(s, principal, clinic)
        items = await dashboard.quarantine_items(s, view.scope, state=state)
    return render(request, "admin/quarantine.html.j2", view=view, items=items, state=state)


@router.get("/quarantine/{item_id}", response_class=HTMLResponse)
async def quarantine_show(request: Request, item_id: str, principal: AdminPrincipal) -> Response:
    item = await _item_in_view(request, principal, item_id)
    async with services_of(request).sessions() as s:
        view = await _view(s, principal, "")
    return render(request, "admin/quarantine-item.html.j2", view=view, item=item, raw=None)


@router.post("/quarantine/{item_id}/read", dependencies=CSRF, response_class=HTMLResponse)
async def quarantine_read(request: Request, item_id: str, principal: AdminPrincipal) -> Response:
    """Show the held message itself: a PHI read, audited by ``quarantine.read_raw``."""
    from gateway.inbound import quarantine

    item = await _item_in_view(request, principal, item_id)
    services = services_of(request)
    async with services.sessions() as s:
        view = await _view(s, principal, "")
    try:
        raw = await quarantine.read_raw(services, item_id, principal.actor)
    except CarebridgeError as exc:
        return render(
            request,
            "admin/quarantine-item.html.j2",
            status_code=400,
            view=view,
            item=item,
            raw=None,
            error=str(exc),
        )
    text = raw[:200_000].decode("utf-8", "replace")
    return render(request, "admin/quarantine-item.html.j2", view=view, item=item, raw=text)


@router.post("/quarantine/{item_id}/{action}", dependencies=CSRF)
async def quarantine_act(
    request: Request, item_id: str, action: str, principal: AdminPrincipal
) -> Response:
    """Release (re-run the intake path) or discard (erase the message); both audited."""
    from gateway.inbound import quarantine
    from gateway.inbound.intake import Intake

    if action not in ("release", "discard"):
        raise HTTPException(status_code=404, detail="No such action.")
    await _item_in_view(request, principal, item_id)
    services = services_of(request)
    try:
        if action == "discard":
            await quarantine.discard(services, item_id, principal.actor)
            note = "discarded"
        else:
            intake = Intake(services)
            try:
                released = await quarantine.release(services, intake, item_id, principal.actor)
            finally:
                await intake.close()
            note = "quarantined-again" if released.quarantined_again else "released"
    except CarebridgeError as exc:
        item = await _item_in_view(request, principal, item_id)
        async with services.sessions() as s:
            view = await _view(s, principal, "")
        return render(
            request,
            "admin/quarantine-item.html.j2",
            status_code=400,
            view=view,
            item=item,
            raw=None,
            error=str(exc),
        )
    return RedirectResponse(f"/admin/quarantine?done={note}", status_code=303)


# -- MTA-STS policy (RFC 8461) -------------------------------------------------------------
# Served to sending MTAs at https://mta-sts.<reply domain>/.well-known/mta-sts.txt when
# [dns] mta_sts_mode is set; its own router because it lives outside /admin.
wellknown_router = APIRouter(include_in_schema=False)


@wellknown_router.get("/.well-known/mta-sts.txt")
async def mta_sts_policy(request: Request) -> Response:
    from gateway.admin.clinics import clinic_by_reply_domain

    services = services_of(request)
    host = request.headers.get("host", "").split(":")[0].lower().rstrip(".")
    if not services.config.dns.mta_sts_mode or not host.startswith("mta-sts."):
        raise HTTPException(status_code=404, detail="No MTA-STS policy here.")
    async with services.sessions() as s:
        clinic = await clinic_by_reply_domain(s, host.removeprefix("mta-sts."))
    if clinic is None:
        raise HTTPException(status_code=404, detail="No MTA-STS policy here.")
    return Response(
        domains.mta_sts_policy(services.config),
        media_type="text/plain; charset=utf-8",
        headers={"cache-control": "public, max-age=3600"},
    )

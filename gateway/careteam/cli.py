"""``carebridge staff|routing|pool|calendar ...``: a clinic's care team from the command line.

``staff add|list`` manages staff accounts; ``routing`` and ``pool`` are a clinic's pools and
routing rules, the same operations as the workspace's set-up page (:mod:`gateway.careteam.pools`),
for scripts and for operators; ``calendar`` is the opening hours and holidays the reply deadlines
count. Every change is audited with the actor ``cli``.
"""

from __future__ import annotations

import json
import secrets
import sys
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.admin import clinics
from gateway.careteam import digests, pools, sla, staff
from gateway.clitools import ClinicFilterOpt, ClinicOpt, JsonOpt, emit, run_with_services
from gateway.errors import UsageError
from gateway.services import Services

staff_app = typer.Typer(name="staff", help="Staff accounts.", no_args_is_help=True)
routing_app = typer.Typer(
    name="routing",
    help="Routing rules: which pool each request type goes to.",
    no_args_is_help=True,
)
pool_app = typer.Typer(
    name="pool", help="Pools of a clinic and their members.", no_args_is_help=True
)
calendar_app = typer.Typer(
    name="calendar",
    help="A clinic's opening hours and holidays (reply deadlines count only open time).",
    no_args_is_help=True,
)
APPS = (staff_app, routing_app, pool_app, calendar_app)


# -- staff ---------------------------------------------------------------------------------
@staff_app.command("add")
def staff_add(
    ctx: typer.Context,
    email: Annotated[str, typer.Option(help="Work email address.")],
    name: Annotated[str, typer.Option(help="Full name.")],
    role: Annotated[
        str, typer.Option(help="provider, nurse, front_desk, clinic_admin or operator.")
    ],
    clinic: Annotated[
        str | None, typer.Option(help="Clinic slug (not needed for operators).")
    ] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
) -> None:
    """Add a staff account. Without --password-stdin a one-time password is printed."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(12)
    if password_stdin and len(password) < 12:
        raise UsageError("password from stdin must be at least 12 characters")

    async def go(services: Services) -> str:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic) if clinic else None
            m = await staff.add_staff(
                s,
                services.keyring,
                clinic=c,
                name=name,
                email=email,
                role=role,
                password=password,
                actor="cli",
            )
            return m.id

    sid = run_with_services(ctx, go)
    typer.echo(f"staff {sid} created")
    if not password_stdin:
        typer.echo(f"one-time password: {password}")


@staff_app.command("list")
def staff_list(
    ctx: typer.Context,
    clinic: ClinicFilterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List staff accounts (ids and roles; names with --json only)."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic) if clinic else None
            rows = await staff.list_staff(s, c)
            await audit.record(s, "cli", "staff.list", "clinic", c.id if c else "")
            return [
                {
                    "id": m.id,
                    "name": m.name,
                    "role": m.role,
                    "clinic_id": m.clinic_id,
                    "active": m.active,
                }
                for m in rows
            ]

    emit(run_with_services(ctx, go), ["id", "name", "role", "clinic_id", "active"], as_json)


# -- routing and pools ---------------------------------------------------------------------
async def _rule_rows(services: Services, slug: str) -> list[dict[str, Any]]:
    async with services.sessions() as s:
        clinic = await clinics.get_clinic(s, slug)
        return [
            {
                "position": n,
                "id": v.rule.id,
                "request_type": v.rule.request_type,
                "pool": v.pool.slug,
                "sla_hours": v.rule.sla_hours if v.rule.sla_hours is not None else "",
            }
            for n, v in enumerate(await pools.rules_of(s, clinic.id), start=1)
        ]


@routing_app.command("list")
def routing_list(ctx: typer.Context, clinic: ClinicOpt, as_json: JsonOpt = False) -> None:
    """Show the rules in the order they are applied."""
    rows = run_with_services(ctx, lambda services: _rule_rows(services, clinic))
    emit(rows, ["position", "request_type", "pool", "sla_hours", "id"], as_json)


async def _pool_id(s: AsyncSession, clinic_id: str, slug: str) -> str:
    for p in await pools.pools_of(s, clinic_id):
        if p.slug == slug:
            return p.id
    raise UsageError(f"no pool {slug!r} at this clinic; see 'carebridge pool list'")


@routing_app.command("add")
def routing_add(
    ctx: typer.Context,
    clinic: ClinicOpt,
    request_type: Annotated[str, typer.Option("--type", help="A request type, or * for all.")],
    pool: Annotated[str, typer.Option(help="The pool's slug.")],
    sla_hours: Annotated[int | None, typer.Option(help="Business hours to reply.")] = None,
) -> None:
    """Append a rule (it applies after the existing ones; move it up to take precedence)."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            await pools.add_rule(
                s,
                clinic_id=c.id,
                request_type=request_type,
                pool_id=await _pool_id(s, c.id, pool),
                sla_hours=sla_hours,
                actor="cli",
            )

    run_with_services(ctx, go)
    typer.echo("rule added")


@routing_app.command("move")
def routing_move(
    ctx: typer.Context,
    clinic: ClinicOpt,
    rule_id: Annotated[str, typer.Argument(help="The rule's id (see 'routing list').")],
    up: Annotated[bool, typer.Option("--up/--down", help="Direction.")] = True,
) -> None:
    """Move a rule one place up or down."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            await pools.move_rule(
                s, clinic_id=c.id, rule_id=rule_id, offset=-1 if up else 1, actor="cli"
            )

    run_with_services(ctx, go)
    typer.echo("rule moved")


@routing_app.command("remove")
def routing_remove(
    ctx: typer.Context,
    clinic: ClinicOpt,
    rule_id: Annotated[str, typer.Argument(help="The rule's id (see 'routing list').")],
) -> None:
    """Remove a rule."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            await pools.remove_rule(s, clinic_id=c.id, rule_id=rule_id, actor="cli")

    run_with_services(ctx, go)
    typer.echo("rule removed")


@pool_app.command("list")
def pool_list(ctx: typer.Context, clinic: ClinicOpt, as_json: JsonOpt = False) -> None:
    """List a clinic's pools with their member and open-thread counts."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as s:
            c = await clinics.get_clinic(s, clinic)
            return [
                {
                    "slug": p.slug,
                    "name": p.name,
                    "members": await pools.active_member_count(s, p.id),
                    "open": len(await pools.queue(s, p.id)),
                    "id": p.id,
                }
                for p in await pools.pools_of(s, c.id)
            ]

    emit(run_with_services(ctx, go), ["slug", "name", "members", "open", "id"], as_json)


@pool_app.command("add")
def pool_add(
    ctx: typer.Context,
    clinic: ClinicOpt,
    slug: Annotated[str, typer.Argument(help="Short name: letters, digits, '-'.")],
    name: Annotated[str, typer.Option(help='Display name, e.g. "Dr. X\'s team".')],
) -> None:
    """Create a pool (then route request types to it with 'routing add')."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            await pools.add_pool(s, clinic_id=c.id, slug=slug, name=name, actor="cli")

    run_with_services(ctx, go)
    typer.echo(f"pool {slug} added")


@pool_app.command("add-member")
def pool_add_member(
    ctx: typer.Context,
    clinic: ClinicOpt,
    pool: Annotated[str, typer.Argument(help="The pool's slug.")],
    staff_id: Annotated[str, typer.Argument(help="The staff member's id (see 'staff list').")],
    supervisor: Annotated[bool, typer.Option(help="Also make them the pool's supervisor.")] = False,
) -> None:
    """Add a staff member to a pool (they get its digests and SLA warnings)."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            p = await pools.get_pool(s, c.id, await _pool_id(s, c.id, pool))
            await pools.add_member(s, pool=p, staff_id=staff_id, actor="cli")
            if supervisor:
                await pools.set_supervisor(s, pool=p, staff_id=staff_id, actor="cli")

    run_with_services(ctx, go)
    typer.echo("member added")


@pool_app.command("fallback")
def pool_fallback(
    ctx: typer.Context,
    clinic: ClinicOpt,
    staff_id: Annotated[str, typer.Argument(help="The staff member's id (see 'staff list').")] = "",
    default: Annotated[
        bool, typer.Option("--default", help="Go back to the default recipient.")
    ] = False,
) -> None:
    """Show or choose who hears of requests landing in a pool nobody watches.

    The default is the clinic's first active clinic admin, else its first provider. Without
    STAFF_ID (or --default) it prints the current recipient."""

    async def go(services: Services) -> str:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            if staff_id or default:
                await pools.set_fallback(s, c, staff_id=staff_id or None, actor="cli")
            who = await digests.fallback_recipient(s, c)
            chosen = "chosen" if c.fallback_staff_id else "default"
            return (
                f"fallback recipient: {who.id} ({who.role}, {chosen})"
                if who
                else ("no fallback recipient: add an active clinic admin or provider")
            )

    typer.echo(run_with_services(ctx, go))


# -- calendar ------------------------------------------------------------------------------


@calendar_app.command("show")
def calendar_show(ctx: typer.Context, clinic: ClinicOpt, as_json: JsonOpt = False) -> None:
    """Show the timezone, opening hours per day and the holidays."""

    async def go(services: Services) -> dict[str, Any]:
        async with services.sessions() as s:
            c = await clinics.get_clinic(s, clinic)
            return {
                "timezone": c.timezone,
                "hours": sla.format_hours(c.business_hours or {}),
                "holidays": list(c.holidays or []),
                "holiday_country": c.holiday_country,
                "staff_email_replies": c.staff_email_replies,
            }

    doc = run_with_services(ctx, go)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"timezone  {doc['timezone']}")
    for day, text in doc["hours"].items():
        typer.echo(f"{day:<9} {text or 'closed'}")
    typer.echo(f"holidays  {', '.join(doc['holidays']) or '(none)'}")
    typer.echo(f"country   {doc['holiday_country'] or '(none)'}")


@calendar_app.command("set")
def calendar_set(
    ctx: typer.Context,
    clinic: ClinicOpt,
    timezone: Annotated[str | None, typer.Option(help="IANA name, e.g. America/Chicago.")] = None,
    hours: Annotated[
        list[str] | None,
        typer.Option("--hours", help="DAY=PERIODS, e.g. mon=08:00-17:00 or sat= (closed)."),
    ] = None,
    holiday: Annotated[
        list[str] | None, typer.Option("--holiday", help="A closed date (YYYY-MM-DD); repeat.")
    ] = None,
    clear_holidays: Annotated[bool, typer.Option(help="Remove every listed holiday.")] = False,
    country: Annotated[
        str | None, typer.Option(help="Public holidays of (e.g. US; '' none).")
    ] = None,
) -> None:
    """Change the calendar; days not named in --hours keep their hours."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            new_hours = None
            if hours:
                current = sla.format_hours(c.business_hours or {})
                for item in hours:
                    day, sep, periods = item.partition("=")
                    day = day.strip().lower()[:3]
                    if not sep or day not in sla.DAYS:
                        raise UsageError(f"--hours {item!r}: use DAY=PERIODS, e.g. mon=08:00-17:00")
                    current[day] = periods
                new_hours = sla.hours_from_text(current)
            dates = None
            if clear_holidays or holiday:
                dates = ([] if clear_holidays else list(c.holidays or [])) + list(holiday or [])
            await sla.update_calendar(
                s,
                c,
                timezone=timezone,
                business_hours=new_hours,
                holidays=dates,
                holiday_country=country,
                actor="cli",
            )

    run_with_services(ctx, go)
    typer.echo("calendar updated")

"""``carebridge routing ...`` and ``carebridge pool ...``: a clinic's pools and routing rules.

The same operations as the workspace's set-up page (:mod:`gateway.careteam.pools`), for scripts and
for operators; every change is audited with the actor ``cli``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.admin import clinics
from gateway.careteam import pools
from gateway.errors import UsageError
from gateway.services import Services

routing_app = typer.Typer(
    help="Routing rules: which pool each request type goes to.", no_args_is_help=True
)
pool_app = typer.Typer(help="Pools of a clinic and their members.", no_args_is_help=True)

ClinicOpt = Annotated[str, typer.Option("--clinic", help="The clinic's slug.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _run(ctx: typer.Context, fn: Any) -> Any:
    from gateway.cli import run_with_services

    return run_with_services(ctx, fn)


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
    from gateway.cli import emit

    rows = _run(ctx, lambda services: _rule_rows(services, clinic))
    emit(rows, ["position", "request_type", "pool", "sla_hours", "id"], as_json)


async def _pool_id(s: Any, clinic_id: str, slug: str) -> str:
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

    _run(ctx, go)
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

    _run(ctx, go)
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

    _run(ctx, go)
    typer.echo("rule removed")


@pool_app.command("list")
def pool_list(ctx: typer.Context, clinic: ClinicOpt, as_json: JsonOpt = False) -> None:
    """List a clinic's pools with their member and open-thread counts."""
    from gateway.cli import emit

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as s:
            c = await clinics.get_clinic(s, clinic)
            return [
                {
                    "slug": p.slug,
                    "name": p.name,
                    "members": len(await pools.members_of(s, p.id)),
                    "open": len(await pools.queue(s, p.id)),
                    "id": p.id,
                }
                for p in await pools.pools_of(s, c.id)
            ]

    emit(_run(ctx, go), ["slug", "name", "members", "open", "id"], as_json)


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

    _run(ctx, go)
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

    _run(ctx, go)
    typer.echo("member added")


calendar_app = typer.Typer(
    help="A clinic's opening hours and holidays (reply deadlines count only open time).",
    no_args_is_help=True,
)


@calendar_app.command("show")
def calendar_show(ctx: typer.Context, clinic: ClinicOpt, as_json: JsonOpt = False) -> None:
    """Show the timezone, opening hours per day and the holidays."""
    import json

    from gateway.careteam import sla

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

    doc = _run(ctx, go)
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
    from gateway.careteam import sla

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

    _run(ctx, go)
    typer.echo("calendar updated")

"""``carebridge clinic|domain|apikey ...``: the operator's administration from the command line.

``clinic add|list`` creates clinics (with their default pools and routing rules) and lists them.

``domain add`` sets a clinic's domains and DKIM keys, ``domain dns`` prints what to publish
(zone-file lines, or ``--json`` for tools), ``domain check`` looks it all up and exits 1 when
anything is wrong, ``domain rotate-dkim`` starts (or with ``--finish`` completes) a DKIM key
rotation, ``domain keys`` lists the keys and their states.

``apikey create|list|revoke`` manages the bearer keys of the integration REST API.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.admin import apikeys, clinics, domains
from gateway.clitools import JsonOpt, JsonTextOpt, emit, run_with_services
from gateway.models import ApiKey, DkimKey
from gateway.services import Services

clinic_app = typer.Typer(name="clinic", help="Clinics.", no_args_is_help=True)
domain_app = typer.Typer(
    name="domain", help="Clinics' relay domains: DKIM keys and DNS records.", no_args_is_help=True
)
apikey_app = typer.Typer(
    name="apikey", help="API keys for the integration REST API.", no_args_is_help=True
)
APPS = (clinic_app, domain_app, apikey_app)

ClinicArg = Annotated[str, typer.Argument(help="Clinic slug, e.g. riverside.")]


# -- clinic --------------------------------------------------------------------------------
@clinic_app.command("add")
def clinic_add(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Short name, e.g. riverside.")],
    name: Annotated[str, typer.Option(help="Display name used in emails.")],
    org: Annotated[str, typer.Option(help="Organisation slug (created if new).")] = "default",
    timezone: Annotated[str, typer.Option(help="IANA timezone.")] = "UTC",
    reply_domain: Annotated[str, typer.Option(help="Domain patients reply to.")] = "",
    sending_domain: Annotated[str, typer.Option(help="Domain emails are sent from.")] = "",
    urgent_sla_minutes: Annotated[
        int, typer.Option(help="Reply deadline for urgent requests, in business minutes.")
    ] = clinics.DEFAULT_URGENT_SLA_MINUTES,
) -> None:
    """Add a clinic with its default pools and routing rules.

    The pools start empty; the first staff member added ('carebridge staff add') joins every
    pool nobody watches, and the clinic's fallback recipient ('carebridge pool fallback')
    hears of any request that still lands where nobody watches."""

    async def go(services: Services) -> str:
        async with services.transaction() as s:
            o = await clinics.get_or_create_org(s, org, org, "cli")
            c = await clinics.add_clinic(
                s,
                org=o,
                slug=slug,
                name=name,
                timezone=timezone,
                reply_domain=reply_domain,
                sending_domain=sending_domain,
                urgent_sla_minutes=urgent_sla_minutes,
                actor="cli",
            )
            return c.id

    typer.echo(f"clinic {slug} created ({run_with_services(ctx, go)})")


@clinic_app.command("set")
def clinic_set(
    ctx: typer.Context,
    slug: ClinicArg,
    urgent_sla_minutes: Annotated[
        int, typer.Option(help="Reply deadline for urgent requests, in business minutes.")
    ],
) -> None:
    """Change a clinic's settings (the urgent reply deadline; applies to new urgent requests)."""

    async def go(services: Services) -> None:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, slug)
            await clinics.set_urgent_sla(s, c, minutes=urgent_sla_minutes, actor="cli")

    run_with_services(ctx, go)
    typer.echo(
        f"clinic {slug}: urgent requests are due within {urgent_sla_minutes} business minutes"
    )


@clinic_app.command("list")
def clinic_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List clinics."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as s:
            return [
                {
                    "slug": c.slug,
                    "id": c.id,
                    "name": c.name,
                    "timezone": c.timezone,
                    "reply_domain": c.reply_domain,
                    "sending_domain": c.sending_domain,
                    "enrolment_code": c.enrolment_code,
                    "urgent_sla_minutes": c.urgent_sla_minutes,
                    "fallback_staff_id": c.fallback_staff_id or "",
                }
                for c in await clinics.list_clinics(s)
            ]

    emit(run_with_services(ctx, go), ["slug", "name", "timezone", "reply_domain"], as_json)


# -- domain --------------------------------------------------------------------------------
@domain_app.command("add")
def domain_add(
    ctx: typer.Context,
    clinic: ClinicArg,
    sending_domain: Annotated[str, typer.Option(help="Domain the emails come From.")],
    reply_domain: Annotated[str, typer.Option(help="Domain patients reply to (MX here).")],
) -> None:
    """Set the clinic's sending and reply domains and create its DKIM keys."""

    async def go(services: Services) -> domains.AddResult:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            return await domains.add_domains(
                s,
                c,
                sending_domain=sending_domain,
                reply_domain=reply_domain,
                now=services.clock.now(),
                actor="cli",
            )

    result = run_with_services(ctx, go)
    c = result.clinic
    typer.echo(f"clinic {clinic}: sending domain {c.sending_domain}, reply domain {c.reply_domain}")
    for key in result.created_keys:
        typer.echo(f"created {key.algorithm} DKIM key, selector {key.selector}")
    typer.echo(
        f"next: publish the records from 'carebridge domain dns {clinic}', then run "
        f"'carebridge domain check {clinic}'"
    )


@domain_app.command("dns")
def domain_dns(ctx: typer.Context, clinic: ClinicArg, as_json: JsonTextOpt = False) -> None:
    """Print every DNS record the clinic must publish."""

    async def go(services: Services) -> tuple[list[domains.DnsRecord], str]:
        async with services.sessions() as s:
            c = await clinics.get_clinic(s, clinic)
            wanted = domains.records(services.config, c, await domains.clinic_keys(s, c))
        policy = domains.mta_sts_policy(services.config) if services.config.dns.mta_sts_mode else ""
        return wanted, policy

    wanted, policy = run_with_services(ctx, go)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in wanted], indent=2))
        return
    for r in wanted:
        note = f" ({r.key_state} key)" if r.key_state else ""
        typer.echo(f"; {r.kind}{note}")
        typer.echo(r.zone_line())
    if policy:
        mx = next(r for r in wanted if r.kind == "mx")
        typer.echo(
            f"; MTA-STS policy, served by the web part at "
            f"https://mta-sts.{mx.name}/.well-known/mta-sts.txt:"
        )
        for line in policy.splitlines():
            typer.echo(f";   {line}")


@domain_app.command("check")
def domain_check(ctx: typer.Context, clinic: ClinicArg, as_json: JsonTextOpt = False) -> None:
    """Look every record up; exit 1 naming each one that is missing or different."""

    async def go(services: Services) -> domains.CheckReport:
        return await domains.check_clinic(services, clinic, actor="cli")

    report: domains.CheckReport = run_with_services(ctx, go)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for r in report.results:
            line = f"{r.status.upper():9} {r.record.kind:17} {r.record.type:3} {r.record.name}"
            typer.echo(line + (f"  ({r.detail})" if r.detail and not r.ok else ""))
        for selector in report.activated:
            typer.echo(f"DKIM selector {selector} seen in DNS: signing switched to it")
        for selector in report.retired:
            typer.echo(f"DKIM selector {selector} retired: remove its record from DNS")
        bad = sum(not r.ok for r in report.results)
        typer.echo("all records ok" if not bad else f"{bad} record(s) need attention", err=bad > 0)
    if not report.ok:
        raise typer.Exit(1)


@domain_app.command("rotate-dkim")
def domain_rotate_dkim(
    ctx: typer.Context,
    clinic: ClinicArg,
    finish: Annotated[
        bool, typer.Option("--finish", help="Retire the keys a finished rotation replaced.")
    ] = False,
) -> None:
    """Start a DKIM rotation: new keys are pending until 'domain check' sees them in DNS."""

    async def go(services: Services) -> list[DkimKey]:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            fn = domains.finish_rotation if finish else domains.rotate_dkim
            return await fn(s, c, now=services.clock.now(), actor="cli")

    keys = run_with_services(ctx, go)
    if finish:
        if not keys:
            typer.echo("no replaced keys to retire")
        for k in keys:
            typer.echo(f"retired selector {k.selector}: remove its record from DNS")
        return
    for k in keys:
        typer.echo(f"new {k.algorithm} key, selector {k.selector} ({k.state})")
    if keys and keys[0].state == "pending":
        typer.echo(
            f"publish the new records ('carebridge domain dns {clinic}'); "
            f"'carebridge domain check {clinic}' switches signing once they are visible"
        )


@domain_app.command("keys")
def domain_keys(ctx: typer.Context, clinic: ClinicArg, as_json: JsonTextOpt = False) -> None:
    """List the clinic's DKIM keys and their states."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as s:
            c = await clinics.get_clinic(s, clinic)
            return [
                {
                    "selector": k.selector,
                    "domain": k.domain,
                    "algorithm": k.algorithm,
                    "state": k.state,
                    "created_at": k.created_at.isoformat(),
                    "activated_at": k.activated_at.isoformat() if k.activated_at else None,
                    "retired_at": k.retired_at.isoformat() if k.retired_at else None,
                }
                for k in await domains.clinic_keys(s, c)
            ]

    emit(
        run_with_services(ctx, go),
        ["selector", "algorithm", "state", "domain", "created_at"],
        as_json,
    )


# -- apikey --------------------------------------------------------------------------------
def _apikey_row(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "org_id": key.org_id or "",
        "created_at": key.created_at.isoformat(timespec="seconds"),
        "last_used_at": key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "",
        "revoked": key.revoked_at is not None,
    }


@apikey_app.command("create")
def apikey_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. lab-system.")],
    role: Annotated[str, typer.Option(help="integration or admin.")] = "integration",
    org: Annotated[str | None, typer.Option(help="Limit the key to one organisation.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print it once; only its hash is kept."""

    async def go(services: Services) -> apikeys.CreatedKey:
        async with services.transaction() as session:
            return await apikeys.create(
                session, name=name, role=role, org_slug=org, now=services.clock.now(), actor="cli"
            )

    created = run_with_services(ctx, go)
    if as_json:
        emit([{**_apikey_row(created.row), "key": created.value}], [], True)
        return
    typer.echo(created.value)
    typer.echo(
        f"API key {created.row.prefix} ({created.row.role}) created; store it now, "
        "it cannot be shown again",
        err=True,
    )


@apikey_app.command("list")
def apikey_list(
    ctx: typer.Context,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their values)."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as session:
            return [_apikey_row(k) for k in await apikeys.list_keys(session)]

    rows = run_with_services(ctx, go)
    emit(rows, ["id", "name", "role", "prefix", "last_used_at", "revoked"], as_json)


@apikey_app.command("revoke")
def apikey_revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id or prefix.")],
) -> None:
    """Revoke a key at once; requests with it get 401."""

    async def go(services: Services) -> ApiKey:
        async with services.transaction() as session:
            return await apikeys.revoke(session, key, now=services.clock.now(), actor="cli")

    row = run_with_services(ctx, go)
    typer.echo(f"API key {row.prefix} revoked")

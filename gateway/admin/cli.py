"""``carebridge domain ...``: relay-domain onboarding from the command line.

``add`` sets a clinic's domains and DKIM keys, ``dns`` prints what to publish (zone-file lines,
or ``--json`` for tools), ``check`` looks it all up and exits 1 when anything is wrong,
``rotate-dkim`` starts (or with ``--finish`` completes) a DKIM key rotation, ``keys`` lists
the keys and their states.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.admin import domains
from gateway.admin.clinics import get_clinic
from gateway.services import Services

app = typer.Typer(help="Clinics' relay domains: DKIM keys and DNS records.", no_args_is_help=True)

ClinicArg = Annotated[str, typer.Argument(help="Clinic slug, e.g. riverside.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _run(ctx: typer.Context, fn: Any) -> Any:
    # Imported here: gateway.cli imports this module to register the sub-app.
    from gateway.cli import run_with_services

    return run_with_services(ctx, fn)


@app.command("add")
def add(
    ctx: typer.Context,
    clinic: ClinicArg,
    sending_domain: Annotated[str, typer.Option(help="Domain the emails come From.")],
    reply_domain: Annotated[str, typer.Option(help="Domain patients reply to (MX here).")],
) -> None:
    """Set the clinic's sending and reply domains and create its DKIM keys."""

    async def go(services: Services) -> domains.AddResult:
        async with services.transaction() as s:
            c = await get_clinic(s, clinic)
            return await domains.add_domains(
                s,
                c,
                sending_domain=sending_domain,
                reply_domain=reply_domain,
                now=services.clock.now(),
                actor="cli",
            )

    result = _run(ctx, go)
    c = result.clinic
    typer.echo(f"clinic {clinic}: sending domain {c.sending_domain}, reply domain {c.reply_domain}")
    for key in result.created_keys:
        typer.echo(f"created {key.algorithm} DKIM key, selector {key.selector}")
    typer.echo(
        f"next: publish the records from 'carebridge domain dns {clinic}', then run "
        f"'carebridge domain check {clinic}'"
    )


@app.command("dns")
def dns(ctx: typer.Context, clinic: ClinicArg, as_json: JsonOpt = False) -> None:
    """Print every DNS record the clinic must publish."""

    async def go(services: Services) -> tuple[list[domains.DnsRecord], str]:
        async with services.sessions() as s:
            c = await get_clinic(s, clinic)
            wanted = domains.records(services.config, c, await domains.clinic_keys(s, c))
        policy = domains.mta_sts_policy(services.config) if services.config.dns.mta_sts_mode else ""
        return wanted, policy

    wanted, policy = _run(ctx, go)
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


@app.command("check")
def check(ctx: typer.Context, clinic: ClinicArg, as_json: JsonOpt = False) -> None:
    """Look every record up; exit 1 naming each one that is missing or different."""

    async def go(services: Services) -> domains.CheckReport:
        return await domains.check_clinic(services, clinic, actor="cli")

    report: domains.CheckReport = _run(ctx, go)
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


@app.command("rotate-dkim")
def rotate_dkim(
    ctx: typer.Context,
    clinic: ClinicArg,
    finish: Annotated[
        bool, typer.Option("--finish", help="Retire the keys a finished rotation replaced.")
    ] = False,
) -> None:
    """Start a DKIM rotation: new keys are pending until 'domain check' sees them in DNS."""

    async def go(services: Services) -> list[Any]:
        async with services.transaction() as s:
            c = await get_clinic(s, clinic)
            fn = domains.finish_rotation if finish else domains.rotate_dkim
            return await fn(s, c, now=services.clock.now(), actor="cli")

    keys = _run(ctx, go)
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


@app.command("keys")
def list_keys(ctx: typer.Context, clinic: ClinicArg, as_json: JsonOpt = False) -> None:
    """List the clinic's DKIM keys and their states."""
    from gateway.cli import emit

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as s:
            c = await get_clinic(s, clinic)
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

    emit(_run(ctx, go), ["selector", "algorithm", "state", "domain", "created_at"], as_json)

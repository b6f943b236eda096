"""``carebridge quarantine list|show|release|discard``: the operator's view of held mail.

Listings show ids, reason codes, verdicts and sizes, never addresses or text; ``show --raw``
prints the message itself and is audited as a PHI read. ``release`` re-runs the intake path.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from gateway.clitools import JsonOpt, emit, run_with_services
from gateway.inbound import quarantine
from gateway.inbound.intake import Intake, state_of
from gateway.services import Services

quarantine_app = typer.Typer(
    name="quarantine", help="Quarantined inbound mail.", no_args_is_help=True
)
APPS = (quarantine_app,)

ItemArg = Annotated[str, typer.Argument(help="The quarantine item's id (see 'list').")]
COLUMNS = ["id", "reason", "created_at", "route", "source", "state"]
ACTOR = "cli"


@quarantine_app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str, typer.Option(help="held, released, discarded or all.")] = "held",
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List quarantined messages (oldest first)."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as session:
            rows = await quarantine.list_items(session, state, limit)
            return [quarantine.summary(item, inbound) for item, inbound in rows]

    emit(run_with_services(ctx, go), COLUMNS, as_json)


@quarantine_app.command("show")
def show(
    ctx: typer.Context,
    item: ItemArg,
    raw: Annotated[bool, typer.Option("--raw", help="Print the message itself (audited).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one item: why it is held, its verdicts; with --raw, the message."""

    async def go(services: Services) -> tuple[dict[str, Any], bytes | None]:
        async with services.sessions() as session:
            q, inbound = await quarantine.get_item(session, item)
            info = quarantine.summary(q, inbound)
        content = await quarantine.read_raw(services, item, ACTOR) if raw else None
        return info, content

    info, content = run_with_services(ctx, go)
    if as_json:
        if content is not None:
            info["raw"] = content.decode("utf-8", "replace")
        typer.echo(json.dumps(info, indent=2))
        return
    if content is not None:
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
        return
    for key, value in info.items():
        typer.echo(f"{key:12} {value}")


@quarantine_app.command("release")
def release(ctx: typer.Context, item: ItemArg, as_json: JsonOpt = False) -> None:
    """Re-run the intake path on a held message (it may be quarantined again)."""

    async def go(services: Services) -> quarantine.Released:
        intake = Intake(services)
        try:
            return await quarantine.release(services, intake, item, ACTOR)
        finally:
            await intake.close()

    result = run_with_services(ctx, go)
    outcome = result.outcome
    state = state_of(outcome) if outcome is not None else "unchanged"
    reason = getattr(outcome, "reason", "")
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "id": result.item_id,
                    "inbound_id": result.inbound_id,
                    "outcome": state,
                    "reason": reason,
                }
            )
        )
        return
    if result.quarantined_again:
        typer.echo(f"released {result.item_id}; quarantined again: {reason}")
    else:
        typer.echo(f"released {result.item_id}; outcome: {state}")


@quarantine_app.command("discard")
def discard(ctx: typer.Context, item: ItemArg) -> None:
    """Erase a held message (the item stays, for the record)."""

    async def go(services: Services) -> None:
        await quarantine.discard(services, item, ACTOR)

    run_with_services(ctx, go)
    typer.echo(f"discarded {item}")

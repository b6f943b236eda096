"""``carebridge queue status|list|show|retry|purge``: the operator's view of outbound mail.

Listings show ids, kinds, states, attempts, times and PHI-free errors; never a recipient
address (it is PHI). ``retry`` and ``purge`` are audited.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from gateway import audit
from gateway.clitools import JsonOpt, emit, run_with_services
from gateway.models import Notification
from gateway.outbound import queue
from gateway.services import Services

queue_app = typer.Typer(name="queue", help="The outbound notification queue.", no_args_is_help=True)
APPS = (queue_app,)

COLUMNS = ["id", "kind", "state", "attempts", "next_attempt_at", "last_error"]


def describe(row: Notification, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat(timespec="seconds"),
        "last_error": row.last_error or "",
        "created_at": row.created_at.isoformat(timespec="seconds"),
        "clinic_id": row.clinic_id,
    }
    if full:
        out.update(
            patient_id=row.patient_id,
            staff_id=row.staff_id,
            language=row.language,
            recipient_domain_hash=row.recipient_domain_hash,
            context=row.context,  # PHI-free by construction (see gateway.outbound.notify.Notice)
            coalesce_key=row.coalesce_key,
            claimed_by=row.claimed_by,
            claimed_until=row.claimed_until.isoformat() if row.claimed_until else None,
            message_id=row.message_id,
            bounce_token_id=row.bounce_token_id,
            sent_at=row.sent_at.isoformat() if row.sent_at else None,
            expires_at=row.expires_at.isoformat() if row.expires_at else None,
        )
    return out


@queue_app.command("status")
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Rows per state and the age of the oldest pending one."""

    async def go(services: Services) -> dict[str, Any]:
        async with services.sessions() as s:
            return await queue.status(s, services.clock.now())

    result = run_with_services(ctx, go)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for state, n in result["counts"].items():
        typer.echo(f"{state:<10} {n}")
    typer.echo(f"oldest pending: {result['oldest_pending_seconds']} s")


@queue_app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only rows in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Newest rows first."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as s:
            return [describe(r) for r in await queue.list_rows(s, state=state, limit=limit)]

    emit(run_with_services(ctx, go), COLUMNS, as_json)


@queue_app.command("show")
def show(
    ctx: typer.Context,
    notification_id: Annotated[str, typer.Argument(help="Notification id.")],
    as_json: JsonOpt = False,
) -> None:
    """Everything about one row except its recipient address."""

    async def go(services: Services) -> dict[str, Any]:
        async with services.sessions() as s:
            return describe(await queue.get(s, notification_id), full=True)

    row = run_with_services(ctx, go)
    if as_json:
        typer.echo(json.dumps(row, indent=2, default=str))
        return
    for key, value in row.items():
        typer.echo(f"{key:<22} {value}")


@queue_app.command("retry")
def retry(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(help="Notification ids.")] = None,
    state: Annotated[
        str | None, typer.Option(help="Every row in this state: deferred, failed or bounced.")
    ] = None,
) -> None:
    """Send rows again now (with a fresh dead-letter deadline)."""

    async def go(services: Services) -> int:
        async with services.transaction() as s:
            n = await queue.retry(
                s,
                ids=ids or [],
                state=state,
                now=services.clock.now(),
                cfg=services.config.delivery,
            )
            await audit.record(
                s,
                "cli",
                "queue.retry",
                "notification",
                ",".join(ids or [])[:64],
                state=state,
                count=n,
            )
            return n

    typer.echo(f"{run_with_services(ctx, go)} notification(s) queued again")


@queue_app.command("purge")
def purge(
    ctx: typer.Context,
    older_than_days: Annotated[int, typer.Option(min=0, help="Only rows older than this.")] = 30,
    state: Annotated[
        list[str] | None, typer.Option(help="States to purge (repeatable; default: all finished).")
    ] = None,
) -> None:
    """Delete finished rows (sent, bounced, failed, cancelled) older than a cutoff."""
    states = state or list(queue.TERMINAL)

    async def go(services: Services) -> int:
        async with services.transaction() as s:
            n = await queue.purge(
                s,
                states=states,
                older_than=timedelta(days=older_than_days),
                now=services.clock.now(),
            )
            await audit.record(
                s,
                "cli",
                "queue.purge",
                "notification",
                "",
                states=states,
                older_than_days=older_than_days,
                count=n,
            )
            return n

    typer.echo(f"{run_with_services(ctx, go)} notification(s) purged")

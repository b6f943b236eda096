"""``carebridge apikey create|list|revoke``: bearer keys for the integration REST API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.admin import apikeys
from gateway.models import ApiKey
from gateway.services import Services

app = typer.Typer(help="API keys for the integration REST API.", no_args_is_help=True)


def _row(key: ApiKey) -> dict[str, Any]:
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


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. lab-system.")],
    role: Annotated[str, typer.Option(help="integration or admin.")] = "integration",
    org: Annotated[str | None, typer.Option(help="Limit the key to one organisation.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print it once; only its hash is kept."""
    from gateway.cli import emit, run_with_services

    async def go(services: Services) -> apikeys.CreatedKey:
        async with services.transaction() as session:
            return await apikeys.create(
                session, name=name, role=role, org_slug=org, now=services.clock.now(), actor="cli"
            )

    created = run_with_services(ctx, go)
    if as_json:
        emit([{**_row(created.row), "key": created.value}], [], True)
        return
    typer.echo(created.value)
    typer.echo(
        f"API key {created.row.prefix} ({created.row.role}) created; store it now, "
        "it cannot be shown again",
        err=True,
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List keys (never their values)."""
    from gateway.cli import emit, run_with_services

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.sessions() as session:
            return [_row(k) for k in await apikeys.list_keys(session)]

    rows = run_with_services(ctx, go)
    emit(rows, ["id", "name", "role", "prefix", "last_used_at", "revoked"], as_json)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id or prefix.")],
) -> None:
    """Revoke a key at once; requests with it get 401."""
    from gateway.cli import run_with_services

    async def go(services: Services) -> ApiKey:
        async with services.transaction() as session:
            return await apikeys.revoke(session, key, now=services.clock.now(), actor="cli")

    row = run_with_services(ctx, go)
    typer.echo(f"API key {row.prefix} revoked")

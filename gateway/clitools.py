"""The one toolkit every ``carebridge`` command is built from.

Each area's ``cli.py`` and the root ``gateway/cli.py`` take their config loading, service
start-up, output (``emit``: a table, or JSON with ``--json``) and shared option types from
here, so a command looks the same whichever area defines it. This module imports only
infrastructure, never an area: the areas import it, and the root mounts the areas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Annotated, Any, TypeVar

import typer

from gateway.config import Config, load_config
from gateway.errors import UsageError
from gateway.logs import setup_logging
from gateway.services import Services, open_services

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# For the commands whose plain output is lines of text rather than a table.
JsonTextOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
# A command's scope: the clinic it works on, or (optional) the one a listing is limited to.
ClinicOpt = Annotated[str, typer.Option("--clinic", help="The clinic's slug.")]
ClinicFilterOpt = Annotated[str | None, typer.Option("--clinic", help="Only this clinic.")]


def get_config(ctx: typer.Context) -> Config:
    """Load the config named by the root's ``--config`` and set logging up from it."""
    root = ctx.find_root()
    cfg = load_config(root.obj)
    setup_logging(cfg.log)
    return cfg


def run_with_services(
    ctx: typer.Context, fn: Callable[[Services], Awaitable[T]], *, require_schema: bool = True
) -> T:
    """Open the services, run ``fn`` with them in a fresh event loop, and close them."""
    cfg = get_config(ctx)

    async def main() -> T:
        services = await open_services(cfg, require_schema=require_schema)
        try:
            return await fn(services)
        finally:
            await services.close()

    return asyncio.run(main())


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    typer.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        typer.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def emit(rows: list[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    """Print a listing: every field as JSON with ``--json``, else the named columns as a table."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        print_table(rows, columns)


def parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} must be a date as YYYY-MM-DD, e.g. 1980-04-23") from None

"""The ``carebridge`` command line (typer): the root app that mounts every area's commands.

Each area defines its commands in its own ``cli.py`` on :mod:`gateway.clitools`; this module
only builds the root (``--config``), mounts the areas' apps, and keeps the commands that belong
to no area (serve, db, keys, audit, demo). :func:`main` turns a :class:`CarebridgeError` into
one line on stderr with its exit code: a user's mistake never prints a traceback. Listings take
``--json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import click
import typer
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway import audit, db, keys
from gateway.admin import cli as admin_cli
from gateway.admin import demo as demo_mod
from gateway.careteam import cli as careteam_cli
from gateway.clitools import JsonOpt, emit, get_config, run_with_services
from gateway.crypto import KeyRing, load_keyring, write_keyring
from gateway.errors import CarebridgeError, KeyFileError
from gateway.inbound import cli as inbound_cli
from gateway.outbound import cli as outbound_cli
from gateway.portal import cli as portal_cli
from gateway.services import Services, open_services

app = typer.Typer(
    help="carebridge: secure-messaging gateway between patients and their care teams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(name="db", help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(
    name="keys", help="Encryption keys (kept outside the database).", no_args_is_help=True
)
audit_app = typer.Typer(name="audit", help="The hash-chained audit log.", no_args_is_help=True)

# Mounted in this order because it is the order ``carebridge --help`` lists them in.
for sub_app in (
    db_app,
    keys_app,
    audit_app,
    admin_cli.clinic_app,
    careteam_cli.staff_app,
    portal_cli.patient_app,
    admin_cli.domain_app,
    admin_cli.apikey_app,
    careteam_cli.routing_app,
    careteam_cli.pool_app,
    careteam_cli.calendar_app,
    outbound_cli.queue_app,
    inbound_cli.quarantine_app,
    portal_cli.library_app,
):
    app.add_typer(sub_app)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Config file (default: $CAREBRIDGE_CONFIG or ./config.toml)."
        ),
    ] = None,
) -> None:
    ctx.obj = config


# -- serve / db ----------------------------------------------------------------------------
@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the gateway: web, and every other enabled part, in one loop."""
    # Imported here: it pulls in the web app and every server, which no other command needs.
    from gateway.serve import serve_forever

    run_with_services(ctx, serve_forever)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the database schema to this version."""
    cfg = get_config(ctx)
    db.upgrade(cfg.store_url)
    typer.echo(f"database is at revision {db.head_revision()}")


# -- keys ----------------------------------------------------------------------------------
@keys_app.command("init")
def keys_init(
    ctx: typer.Context,
    if_missing: Annotated[bool, typer.Option(help="Do nothing if the key file exists.")] = False,
) -> None:
    """Create the key file (mode 0600). Refuses to overwrite an existing one."""
    cfg = get_config(ctx)
    path = cfg.path(cfg.keys.file)
    if path.exists():
        if if_missing:
            return
        raise KeyFileError(f"key file {str(path)!r} already exists; refusing to overwrite it")
    write_keyring(path, KeyRing.generate())
    typer.echo(f"created {path} (mode 0600); back it up: without it the data cannot be read")


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    batch_size: Annotated[int, typer.Option(min=1, max=100000)] = 500,
) -> None:
    """Add a new key and re-encrypt every stored value under it, in batches."""

    async def go(services: Services) -> None:
        path = services.config.path(services.config.keys.file)
        bar: Any = None

        def on_total(n: int) -> None:
            nonlocal bar
            bar = click.progressbar(length=max(n, 1), label="re-encrypting", file=sys.stderr)
            bar.__enter__()

        try:
            ring, n = await keys.rotate(
                services.engine,
                services.keyring,
                path,
                batch_size=batch_size,
                progress=lambda k: bar.update(k) if bar else None,
                on_total=on_total,
            )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        typer.echo(f"active key is now {ring.active}; re-encrypted {n} values")

    run_with_services(ctx, go)


@keys_app.command("status")
def keys_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show each key and how many stored values are encrypted under it."""

    async def go(services: Services) -> list[dict[str, Any]]:
        usage = await keys.key_usage(services.engine)
        return [
            {"key_id": k, "state": v.state, "created": v.created, "values": usage.get(k, 0)}
            for k, v in services.keyring.keys.items()
        ]

    emit(run_with_services(ctx, go), ["key_id", "state", "created", "values"], as_json)


# -- audit ---------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Check the audit chain; exit 1 and name the first broken row if it was tampered with."""

    async def go(services: Services) -> audit.VerifyResult:
        async with services.sessions() as session:
            return await audit.verify(session)

    result = run_with_services(ctx, go)
    if as_json:
        typer.echo(json.dumps(result.__dict__))
    elif result.ok:
        typer.echo(f"audit chain intact: {result.checked} rows")
    else:
        typer.echo(f"audit chain BROKEN at row {result.broken_seq}: {result.reason}", err=True)
    if not result.ok:
        raise typer.Exit(1)


# -- demo ----------------------------------------------------------------------------------
@app.command()
def demo(
    ctx: typer.Context,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Seed and exit.")] = False,
) -> None:
    """Set up keys and schema, seed a demo clinic, then serve: see carebridge working."""
    cfg = get_config(ctx)
    path = cfg.path(cfg.keys.file)
    if not path.exists():
        write_keyring(path, KeyRing.generate())
        typer.echo(f"created key file {path}")
    db.upgrade(cfg.store_url)

    async def go() -> None:
        services = await open_services(cfg, keyring=load_keyring(path))
        try:
            try:
                lines = await demo_mod.seed(services)
            except demo_mod.EmailNotWritten as exc:
                for line in exc.seeded:  # what was made, then the one-line error
                    typer.echo(line)
                raise
            for line in lines:
                typer.echo(line)
            if not no_serve:
                from gateway.serve import serve_forever  # heavy: see serve() above

                typer.echo(f"serving on {cfg.web.base_url} (Ctrl-C to stop)")
                await serve_forever(services)
        finally:
            await services.close()

    asyncio.run(go())


def main(argv: list[str] | None = None) -> None:
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="carebridge", standalone_mode=False)
        # Without standalone mode click returns typer.Exit codes instead of exiting.
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except CarebridgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (OperationalError, DBAPIError, OSError) as exc:
        # The database or a file is unreachable: say which setting to check, not a traceback.
        typer.echo(
            f"error: cannot reach the store or a file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); check [store] url and paths",
            err=True,
        )
        sys.exit(2)

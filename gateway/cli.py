"""The ``carebridge`` command line (typer).

Every command loads the config, opens what it needs, and turns a :class:`CarebridgeError` into
one line on stderr with its exit code: a user's mistake never prints a traceback. Listings take
``--json``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Annotated, Any, TypeVar

import click
import typer
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway import audit, db, keys
from gateway.admin import apikey_cli, clinics
from gateway.admin import cli as domains_cli
from gateway.careteam import staff
from gateway.careteam.cli import calendar_app, pool_app, routing_app
from gateway.config import Config, load_config
from gateway.crypto import KeyRing, load_keyring, write_keyring
from gateway.errors import CarebridgeError, KeyFileError, UsageError
from gateway.inbound import cli as quarantine_cli
from gateway.logs import setup_logging
from gateway.outbound import cli as queue_cli
from gateway.portal import cli as library_cli
from gateway.portal import invitations, patients
from gateway.services import Services, open_services

T = TypeVar("T")

app = typer.Typer(
    help="carebridge: secure-messaging gateway between patients and their care teams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys (kept outside the database).", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
clinic_app = typer.Typer(help="Clinics.", no_args_is_help=True)
staff_app = typer.Typer(help="Staff accounts.", no_args_is_help=True)
patient_app = typer.Typer(help="Patients.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(clinic_app, name="clinic")
app.add_typer(staff_app, name="staff")
app.add_typer(patient_app, name="patient")
app.add_typer(domains_cli.app, name="domain")
app.add_typer(apikey_cli.app, name="apikey")
app.add_typer(routing_app, name="routing")
app.add_typer(pool_app, name="pool")
app.add_typer(calendar_app, name="calendar")
app.add_typer(queue_cli.app, name="queue")
app.add_typer(quarantine_cli.app, name="quarantine")
app.add_typer(library_cli.app, name="library")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


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


def get_config(ctx: typer.Context) -> Config:
    root = ctx.find_root()
    cfg = load_config(root.obj)
    setup_logging(cfg.log)
    return cfg


def run_with_services(
    ctx: typer.Context, fn: Callable[[Services], Awaitable[T]], *, require_schema: bool = True
) -> T:
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
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        print_table(rows, columns)


# -- serve / db ----------------------------------------------------------------------------
@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the gateway: web, and every other enabled part, in one loop."""
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


# -- clinics -------------------------------------------------------------------------------
@clinic_app.command("add")
def clinic_add(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Short name, e.g. riverside.")],
    name: Annotated[str, typer.Option(help="Display name used in emails.")],
    org: Annotated[str, typer.Option(help="Organisation slug (created if new).")] = "default",
    timezone: Annotated[str, typer.Option(help="IANA timezone.")] = "UTC",
    reply_domain: Annotated[str, typer.Option(help="Domain patients reply to.")] = "",
    sending_domain: Annotated[str, typer.Option(help="Domain emails are sent from.")] = "",
) -> None:
    """Add a clinic with its default pools and routing rules."""

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
                actor="cli",
            )
            return c.id

    typer.echo(f"clinic {slug} created ({run_with_services(ctx, go)})")


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
                }
                for c in await clinics.list_clinics(s)
            ]

    emit(run_with_services(ctx, go), ["slug", "name", "timezone", "reply_domain"], as_json)


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
    clinic: Annotated[str | None, typer.Option(help="Only this clinic.")] = None,
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


# -- patients ------------------------------------------------------------------------------
def parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} must be a date as YYYY-MM-DD, e.g. 1980-04-23") from None


@patient_app.command("enroll")
def patient_enroll(
    ctx: typer.Context,
    clinic: Annotated[str, typer.Option(help="Clinic slug.")],
    given_name: Annotated[str, typer.Option("--given-name", help="Given name.")],
    family_name: Annotated[str, typer.Option("--family-name", help="Family name.")],
    dob: Annotated[str, typer.Option(help="Date of birth, YYYY-MM-DD.")],
    email: Annotated[str, typer.Option(help="Email address.")],
    language: Annotated[str, typer.Option(help="en or es.")] = "en",
) -> None:
    """Enrol a patient at a clinic (after checking their ID) and send the registration email."""
    birth = parse_date(dob, "--dob")

    async def go(services: Services) -> patients.EnrolResult:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            result = await patients.enroll(
                s,
                services.keyring,
                clinic=c,
                given_name=given_name,
                family_name=family_name,
                date_of_birth=birth,
                email=email,
                source="cli",
                actor="cli",
                language=language,
            )
            if result.patient.status == "pending":
                await invitations.invite(s, services, patient=result.patient, clinic=c)
            return result

    result = run_with_services(ctx, go)
    what = "enrolled" if result.created else "existing account enrolled"
    typer.echo(f"patient {result.patient.id} {what} at {clinic}")
    if result.patient.status == "pending":
        typer.echo("registration email queued")


@patient_app.command("list")
def patient_list(
    ctx: typer.Context,
    clinic: Annotated[str | None, typer.Option(help="Only this clinic.")] = None,
    show_phi: Annotated[bool, typer.Option(help="Include names (the read is audited).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List patients with their state; names only with --show-phi."""

    async def go(services: Services) -> list[dict[str, Any]]:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic) if clinic else None
            out = []
            for p, e in await patients.list_patients(s, c):
                row: dict[str, Any] = {
                    "id": p.id,
                    "clinic_id": e.clinic_id if e else None,
                    "status": p.status,
                    "pending": ", ".join(patients.pending_reasons(p)),
                    "deliverability": p.deliverability,
                    "language": p.language,
                }
                if show_phi:
                    row["name"] = f"{p.given_name} {p.family_name}"
                out.append(row)
            await audit.record(
                s, "cli", "patient.list", "clinic", c.id if c else "", phi=show_phi, count=len(out)
            )
            return out

    cols = ["id", "status", "pending", "deliverability"] + (["name"] if show_phi else [])
    emit(run_with_services(ctx, go), cols, as_json)


# -- demo ----------------------------------------------------------------------------------
@app.command()
def demo(
    ctx: typer.Context,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Seed and exit.")] = False,
) -> None:
    """Set up keys and schema, seed a demo clinic, then serve: see carebridge working."""
    from gateway.admin import demo as demo_mod

    cfg = get_config(ctx)
    path = cfg.path(cfg.keys.file)
    if not path.exists():
        write_keyring(path, KeyRing.generate())
        typer.echo(f"created key file {path}")
    db.upgrade(cfg.store_url)

    async def go() -> None:
        services = await open_services(cfg, keyring=load_keyring(path))
        try:
            for line in await demo_mod.seed(services):
                typer.echo(line)
            if not no_serve:
                from gateway.serve import serve_forever

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

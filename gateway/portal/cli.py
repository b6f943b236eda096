"""``carebridge patient|library ...``: patients and their reading from the command line.

``patient enroll|list`` enrols a patient at a clinic (after the desk has checked their ID) and
lists patients; ``library list|assign`` lists the education library and assigns articles. The
staff desk page does the same from the web; this is for clinics that script enrolment and
their after-visit reading lists.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway import audit
from gateway.admin import clinics
from gateway.clitools import ClinicFilterOpt, JsonOpt, emit, parse_date, run_with_services
from gateway.portal import enrolment, library, patients
from gateway.services import Services

patient_app = typer.Typer(name="patient", help="Patients.", no_args_is_help=True)
library_app = typer.Typer(
    name="library", help="Education library (articles, assignments).", no_args_is_help=True
)
APPS = (patient_app, library_app)


# -- patient -------------------------------------------------------------------------------
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

    async def go(services: Services) -> enrolment.DeskResult:
        async with services.transaction() as s:
            c = await clinics.get_clinic(s, clinic)
            return await enrolment.desk_enrol(
                s,
                services,
                clinic=c,
                given_name=given_name,
                family_name=family_name,
                date_of_birth=birth,
                email=email,
                language=language,
                actor="cli",
                source="cli",
            )

    result = run_with_services(ctx, go)
    if result.patient is None:
        # The same answer the desk gets: nothing about the other clinic's patient.
        typer.echo(
            "this person already has an account; we asked them to connect to "
            f"{clinic} (nothing changes until they approve)"
        )
        return
    what = "enrolled" if result.created else "existing account enrolled"
    typer.echo(f"patient {result.patient.id} {what} at {clinic}")
    if result.reasons:
        typer.echo("registration email queued")


@patient_app.command("list")
def patient_list(
    ctx: typer.Context,
    clinic: ClinicFilterOpt = None,
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


# -- library -------------------------------------------------------------------------------
@library_app.command("list")
def library_list(
    ctx: typer.Context,
    language: Annotated[str, typer.Option(help="en or es.")] = "en",
    topic: Annotated[str, typer.Option(help=f"One of: {', '.join(library.TOPICS)}.")] = "",
    query: Annotated[str, typer.Option("--search", help="Words to look for.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List articles (the starter set is loaded on first use)."""

    async def go(services: Services) -> list[dict[str, Any]]:
        found = await library.search(services, language=language, query=query, topic=topic)
        return [
            {"slug": a.slug, "topic": a.topic, "language": a.language, "title": a.title}
            for a in found
        ]

    emit(run_with_services(ctx, go), ["slug", "topic", "language", "title"], as_json)


@library_app.command("assign")
def library_assign(
    ctx: typer.Context,
    patient_id: Annotated[str, typer.Argument(help="The patient's id.")],
    slug: Annotated[str, typer.Argument(help="The article's slug (see 'library list').")],
    note: Annotated[str, typer.Option(help="A short note shown to the patient.")] = "",
) -> None:
    """Suggest an article to a patient; it appears in their inbox and library."""

    async def go(services: Services) -> str:
        async with services.transaction() as s:
            await patients.get_patient(s, patient_id)
            row = await library.assign(
                s, services, patient_id=patient_id, slug=slug, actor="cli", note=note or None
            )
            return row.id

    assignment = run_with_services(ctx, go)
    typer.echo(f"article {slug} assigned to patient {patient_id} ({assignment})")

"""``carebridge library``: list the education library and assign articles to patients.

The staff desk page does the same from the web; this is for clinics that script their
after-visit reading lists.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.portal import library
from gateway.services import Services

app = typer.Typer(help="Education library (articles, assignments).", no_args_is_help=True)


@app.command("list")
def list_articles(
    ctx: typer.Context,
    language: Annotated[str, typer.Option(help="en or es.")] = "en",
    topic: Annotated[str, typer.Option(help=f"One of: {', '.join(library.TOPICS)}.")] = "",
    query: Annotated[str, typer.Option("--search", help="Words to look for.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List articles (the starter set is loaded on first use)."""
    from gateway.cli import emit, run_with_services

    async def go(services: Services) -> list[dict[str, Any]]:
        found = await library.search(services, language=language, query=query, topic=topic)
        return [
            {"slug": a.slug, "topic": a.topic, "language": a.language, "title": a.title}
            for a in found
        ]

    emit(run_with_services(ctx, go), ["slug", "topic", "language", "title"], as_json)


@app.command("assign")
def assign(
    ctx: typer.Context,
    patient_id: Annotated[str, typer.Argument(help="The patient's id.")],
    slug: Annotated[str, typer.Argument(help="The article's slug (see 'library list').")],
    note: Annotated[str, typer.Option(help="A short note shown to the patient.")] = "",
) -> None:
    """Suggest an article to a patient; it appears in their inbox and library."""
    from gateway.cli import run_with_services
    from gateway.portal import patients

    async def go(services: Services) -> str:
        async with services.transaction() as s:
            await patients.get_patient(s, patient_id)
            row = await library.assign(
                s, services, patient_id=patient_id, slug=slug, actor="cli", note=note or None
            )
            return row.id

    assignment = run_with_services(ctx, go)
    typer.echo(f"article {slug} assigned to patient {patient_id} ({assignment})")

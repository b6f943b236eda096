"""The education library: general health articles by topic, searchable, some assigned by a
clinician to a patient ("read this before your visit").

Articles are general information, not PHI, so they are stored in clear and searched with SQL.
That an article was assigned to a person is PHI-adjacent: the assignment's note is encrypted
and every assignment is audited. A starter set of articles (en and es) is loaded on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import NotFoundError
from gateway.models import Article, ArticleAssignment
from gateway.services import Services

TOPICS = ("heart", "diabetes", "vaccines", "nutrition", "mental_health", "medicines")

# (slug, topic, {lang: (title, summary, body)})
STARTER: tuple[tuple[str, str, dict[str, tuple[str, str, str]]], ...] = (
    (
        "blood-pressure-basics",
        "heart",
        {
            "en": (
                "High blood pressure: the basics",
                "What the numbers mean and how to bring them down.",
                "Blood pressure is written as two numbers. The top number is the pressure when "
                "the heart beats; the bottom number is the pressure between beats. Less salt, "
                "regular walking, limiting alcohol and taking medicines as prescribed all help. "
                "Check your pressure at the same time each day and bring the log to your visit.",
            ),
            "es": (
                "Presión arterial alta: lo básico",
                "Qué significan los números y cómo bajarlos.",
                "La presión arterial se escribe con dos números. El de arriba es la presión "
                "cuando late el corazón; el de abajo, entre latidos. Menos sal, caminar a "
                "menudo, limitar el alcohol y tomar los medicamentos como se indican ayudan. "
                "Mida su presión a la misma hora cada día y traiga el registro a su cita.",
            ),
        },
    ),
    (
        "living-with-diabetes",
        "diabetes",
        {
            "en": (
                "Living well with type 2 diabetes",
                "Food, movement and checking your blood sugar.",
                "Type 2 diabetes means the body does not use insulin well. Eating regular "
                "meals with vegetables and whole grains, moving 30 minutes most days and "
                "checking your blood sugar as your care team suggests keep it under control. "
                "Have your feet and eyes checked every year.",
            ),
            "es": (
                "Vivir bien con diabetes tipo 2",
                "Comida, actividad y control del azúcar en la sangre.",
                "La diabetes tipo 2 significa que el cuerpo no usa bien la insulina. Comer a "
                "horas regulares con verduras y granos integrales, moverse 30 minutos casi "
                "todos los días y medir el azúcar como le indique su equipo ayudan a "
                "controlarla. Revise sus pies y sus ojos cada año.",
            ),
        },
    ),
    (
        "adult-vaccines",
        "vaccines",
        {
            "en": (
                "Vaccines for adults",
                "Flu, tetanus and other shots grown-ups need.",
                "Adults need a flu vaccine every autumn and a tetanus booster every ten years. "
                "Depending on your age and health you may also need shingles, pneumonia or "
                "hepatitis vaccines. You can ask the care team for a copy of your "
                "immunization record through the portal.",
            ),
            "es": (
                "Vacunas para adultos",
                "Gripe, tétanos y otras vacunas que necesitan los adultos.",
                "Los adultos necesitan la vacuna de la gripe cada otoño y un refuerzo del "
                "tétanos cada diez años. Según su edad y salud, quizá necesite vacunas contra "
                "el herpes zóster, la neumonía o la hepatitis. Puede pedir una copia de su "
                "registro de vacunas por el portal.",
            ),
        },
    ),
    (
        "healthy-plate",
        "nutrition",
        {
            "en": (
                "The healthy plate",
                "A simple way to plan balanced meals.",
                "Fill half your plate with vegetables and fruit, a quarter with whole grains "
                "and a quarter with protein such as beans, fish or chicken. Drink water "
                "instead of sugary drinks.",
            ),
            "es": (
                "El plato saludable",
                "Una forma sencilla de planear comidas equilibradas.",
                "Llene la mitad del plato con verduras y frutas, un cuarto con granos "
                "integrales y un cuarto con proteínas como frijoles, pescado o pollo. Tome "
                "agua en lugar de bebidas azucaradas.",
            ),
        },
    ),
    (
        "coping-with-stress",
        "mental_health",
        {
            "en": (
                "Coping with stress and low mood",
                "Everyday steps, and when to ask for help.",
                "Sleep, daily movement, time with people you trust and limiting alcohol help "
                "with stress. If low mood lasts more than two weeks, tell your care team. If "
                "you think about harming yourself, call or text 988 or call 911 now.",
            ),
            "es": (
                "Cómo manejar el estrés y el ánimo bajo",
                "Pasos diarios y cuándo pedir ayuda.",
                "Dormir, moverse cada día, pasar tiempo con personas de confianza y limitar el "
                "alcohol ayudan con el estrés. Si el ánimo bajo dura más de dos semanas, "
                "dígaselo a su equipo. Si piensa en hacerse daño, llame o envíe un texto al "
                "988 o llame al 911 ahora.",
            ),
        },
    ),
    (
        "taking-medicines-safely",
        "medicines",
        {
            "en": (
                "Taking your medicines safely",
                "Keep a list, use one pharmacy, ask before you stop.",
                "Keep an up-to-date list of everything you take, including vitamins. Use one "
                "pharmacy when you can so they can spot interactions. Ask for a renewal a week "
                "before you run out, and do not stop a medicine without talking to your team.",
            ),
            "es": (
                "Tomar sus medicamentos de forma segura",
                "Tenga una lista, use una farmacia, pregunte antes de dejarlos.",
                "Tenga una lista al día de todo lo que toma, incluidas las vitaminas. Use una "
                "sola farmacia si puede, para que detecten interacciones. Pida la renovación "
                "una semana antes de que se acabe y no deje un medicamento sin hablar con su "
                "equipo.",
            ),
        },
    ),
)


async def ensure_starter(session: AsyncSession) -> None:
    """Load the starter articles once (idempotent; a concurrent loader is harmless)."""
    if await session.scalar(select(func.count()).select_from(Article)):
        return
    for slug, topic, versions in STARTER:
        for lang, (title, summary, body) in versions.items():
            session.add(
                Article(
                    slug=slug, language=lang, topic=topic, title=title, summary=summary, body=body
                )
            )
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        pass


def _like(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


async def search(
    services: Services, *, language: str, query: str = "", topic: str = ""
) -> Sequence[Article]:
    async with services.transaction() as s:
        await ensure_starter(s)
        q = select(Article).where(Article.language == language)
        if topic in TOPICS:
            q = q.where(Article.topic == topic)
        if query.strip():
            pattern = _like(query.strip()[:100])
            q = q.where(
                or_(
                    func.lower(Article.title).like(pattern, escape="\\"),
                    func.lower(Article.summary).like(pattern, escape="\\"),
                    func.lower(Article.body).like(pattern, escape="\\"),
                )
            )
        return (await s.scalars(q.order_by(Article.topic, Article.title))).all()


async def get_article(services: Services, slug: str, language: str) -> Article:
    async with services.transaction() as s:
        await ensure_starter(s)
        rows = (await s.scalars(select(Article).where(Article.slug == slug))).all()
    by_lang = {a.language: a for a in rows}
    article = by_lang.get(language) or by_lang.get("en")
    if article is None:
        raise NotFoundError("no such article")
    return article


@dataclass(frozen=True)
class Assigned:
    article: Article
    assignment: ArticleAssignment


async def assigned_to(services: Services, patient_id: str, language: str) -> list[Assigned]:
    async with services.transaction() as s:
        await ensure_starter(s)
        rows = (
            await s.scalars(
                select(ArticleAssignment)
                .where(ArticleAssignment.patient_id == patient_id)
                .order_by(ArticleAssignment.created_at.desc())
            )
        ).all()
        out = []
        for a in rows:
            versions = {
                x.language: x
                for x in (await s.scalars(select(Article).where(Article.slug == a.article_slug)))
            }
            art = versions.get(language) or versions.get("en")
            if art is not None:
                out.append(Assigned(art, a))
        return out


async def assign(
    session: AsyncSession,
    services: Services,
    *,
    patient_id: str,
    slug: str,
    actor: str,
    note: str | None = None,
) -> ArticleAssignment:
    """A clinician assigns an article to a patient (shown in their library and inbox)."""
    await ensure_starter(session)
    if not await session.scalar(select(Article.id).where(Article.slug == slug).limit(1)):
        raise NotFoundError(f"no article {slug!r}")
    existing = await session.scalar(
        select(ArticleAssignment).where(
            ArticleAssignment.patient_id == patient_id, ArticleAssignment.article_slug == slug
        )
    )
    if existing is not None:
        return existing
    now = services.clock.now()
    row = ArticleAssignment(
        patient_id=patient_id, article_slug=slug, assigned_by=actor, note=note, created_at=now
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        actor,
        "article.assign",
        "article_assignment",
        row.id,
        at=now,
        patient_id=patient_id,
    )
    return row


async def mark_read(services: Services, patient_id: str, slug: str) -> None:
    async with services.transaction() as s:
        row = await s.scalar(
            select(ArticleAssignment).where(
                ArticleAssignment.patient_id == patient_id, ArticleAssignment.article_slug == slug
            )
        )
        if row is not None and row.read_at is None:
            row.read_at = services.clock.now()

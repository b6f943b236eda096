"""A clinic's pools, their members, the routing rules and quick replies, as the admin edits them.

Routing rules are data, kept in order: the first rule (lowest position) whose request type
matches wins (``*`` catches everything else), see :func:`gateway.careteam.threads.route`.
Every change is audited with ids only. Pool names and quick replies are the clinic's own
words, never PHI.

Nobody unwatched: a rule may only send requests to a pool with at least one active member
(:func:`add_rule`, :func:`update_rule` and :func:`move_rule` refuse otherwise, saying how to
fix it), and every clinic has a fallback triage recipient (:func:`fallback_recipient`) who is
told about anything that still lands where nobody watches (a member left, a default rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.admin.clinics import check_slug
from gateway.careteam.threads import ANY_REQUEST
from gateway.errors import NotFoundError, UsageError
from gateway.models import Clinic, Pool, PoolMember, QuickReply, RoutingRule, Staff, Thread
from gateway.models.org import REQUEST_TYPES

MAX_SLA_HOURS = 24 * 14


@dataclass(frozen=True)
class RuleView:
    rule: RoutingRule
    pool: Pool


async def pools_of(session: AsyncSession, clinic_id: str) -> Sequence[Pool]:
    return (
        await session.scalars(select(Pool).where(Pool.clinic_id == clinic_id).order_by(Pool.name))
    ).all()


async def get_pool(session: AsyncSession, clinic_id: str, pool_id: str) -> Pool:
    pool = await session.get(Pool, pool_id)
    if pool is None or pool.clinic_id != clinic_id:
        raise NotFoundError("no such pool at this clinic")
    return pool


async def add_pool(
    session: AsyncSession, *, clinic_id: str, slug: str, name: str, actor: str
) -> Pool:
    check_slug(slug, "pool")
    if not name.strip() or len(name) > 200:
        raise UsageError("a pool needs a name of 1 to 200 characters")
    exists = await session.scalar(
        select(Pool.id).where(Pool.clinic_id == clinic_id, Pool.slug == slug)
    )
    if exists:
        raise UsageError(f"pool {slug!r} already exists at this clinic")
    pool = Pool(clinic_id=clinic_id, slug=slug, name=name.strip())
    session.add(pool)
    await session.flush()
    await audit.record(session, actor, "pool.create", "pool", pool.id)
    return pool


async def _clinic_staff(session: AsyncSession, clinic_id: str, staff_id: str) -> Staff:
    member = await session.get(Staff, staff_id)
    if member is None or member.clinic_id != clinic_id or not member.active:
        raise UsageError("choose an active staff member of this clinic")
    return member


async def set_supervisor(
    session: AsyncSession, *, pool: Pool, staff_id: str | None, actor: str
) -> None:
    if staff_id:
        await _clinic_staff(session, pool.clinic_id, staff_id)
    pool.supervisor_id = staff_id or None
    await session.flush()
    await audit.record(session, actor, "pool.supervisor", "pool", pool.id, staff_id=staff_id)


async def members_of(session: AsyncSession, pool_id: str) -> Sequence[Staff]:
    return (
        await session.scalars(
            select(Staff)
            .join(PoolMember, PoolMember.staff_id == Staff.id)
            .where(PoolMember.pool_id == pool_id)
            .order_by(Staff.created_at)
        )
    ).all()


async def active_member_count(session: AsyncSession, pool_id: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(PoolMember)
            .join(Staff, Staff.id == PoolMember.staff_id)
            .where(PoolMember.pool_id == pool_id, Staff.active.is_(True))
        )
        or 0
    )


async def _watched(session: AsyncSession, pool: Pool) -> Pool:
    """The pool, if someone watches it; otherwise a refusal that says what to do."""
    if await active_member_count(session, pool.id) == 0:
        raise UsageError(
            f"pool {pool.slug!r} has no members, so requests routed there would reach nobody: "
            f"add a staff member to it first ('carebridge pool add-member' or the set-up page)"
        )
    return pool


async def fill_empty_pools(session: AsyncSession, member: Staff, *, actor: str) -> list[str]:
    """Put ``member`` into every pool of their clinic that has no active member; the pool ids.

    Called when a staff member is added: the clinic's first staff member watches every
    default pool, so a new clinic never routes requests to nobody (the admin reshapes the
    pools later). Operators span clinics and are never filled in.
    """
    if member.clinic_id is None or member.role == "operator" or not member.active:
        return []
    filled = []
    for pool in await pools_of(session, member.clinic_id):
        if await active_member_count(session, pool.id) == 0:
            await add_member(session, pool=pool, staff_id=member.id, actor=actor)
            filled.append(pool.id)
    return filled


async def set_fallback(
    session: AsyncSession, clinic: Clinic, *, staff_id: str | None, actor: str
) -> None:
    """Choose the clinic's fallback triage recipient (None: back to the default)."""
    if staff_id:
        await _clinic_staff(session, clinic.id, staff_id)
    clinic.fallback_staff_id = staff_id or None
    await session.flush()
    await audit.record(session, actor, "clinic.fallback", "clinic", clinic.id, staff_id=staff_id)


async def unwatched_pool_ids(session: AsyncSession, clinic_id: str | None = None) -> set[str]:
    """Pools (of one clinic, or all) without a single active member."""
    watched = (
        select(PoolMember.pool_id)
        .join(Staff, Staff.id == PoolMember.staff_id)
        .where(Staff.active.is_(True))
    )
    q = select(Pool.id).where(Pool.id.not_in(watched))
    if clinic_id is not None:
        q = q.where(Pool.clinic_id == clinic_id)
    return set((await session.scalars(q)).all())


async def add_member(session: AsyncSession, *, pool: Pool, staff_id: str, actor: str) -> None:
    await _clinic_staff(session, pool.clinic_id, staff_id)
    if await session.get(PoolMember, (pool.id, staff_id)) is None:
        session.add(PoolMember(pool_id=pool.id, staff_id=staff_id))
        await session.flush()
        await audit.record(session, actor, "pool.member_add", "pool", pool.id, staff_id=staff_id)


async def remove_member(session: AsyncSession, *, pool: Pool, staff_id: str, actor: str) -> None:
    row = await session.get(PoolMember, (pool.id, staff_id))
    if row is not None:
        await session.delete(row)
        await session.flush()
        await audit.record(session, actor, "pool.member_remove", "pool", pool.id, staff_id=staff_id)


# -- routing rules ---------------------------------------------------------------------------


async def rules_of(session: AsyncSession, clinic_id: str) -> list[RuleView]:
    rows = (
        await session.execute(
            select(RoutingRule, Pool)
            .join(Pool, Pool.id == RoutingRule.pool_id)
            .where(RoutingRule.clinic_id == clinic_id)
            .order_by(RoutingRule.position, RoutingRule.id)
        )
    ).all()
    return [RuleView(rule, pool) for rule, pool in rows]


def _check_sla(sla_hours: int | None) -> int | None:
    if sla_hours is not None and not 1 <= sla_hours <= MAX_SLA_HOURS:
        raise UsageError(f"SLA hours must be between 1 and {MAX_SLA_HOURS} (or empty: one day)")
    return sla_hours


async def add_rule(
    session: AsyncSession,
    *,
    clinic_id: str,
    request_type: str,
    pool_id: str,
    sla_hours: int | None,
    actor: str,
) -> RoutingRule:
    """Append a rule at the end of the list."""
    if request_type not in (*REQUEST_TYPES, ANY_REQUEST):
        raise UsageError(
            f"request type {request_type!r} is unknown; use one of: "
            f"{', '.join(REQUEST_TYPES)}, or * for everything else"
        )
    await _watched(session, await get_pool(session, clinic_id, pool_id))
    last = await session.scalar(
        select(func.max(RoutingRule.position)).where(RoutingRule.clinic_id == clinic_id)
    )
    rule = RoutingRule(
        clinic_id=clinic_id,
        position=(last or 0) + 1,
        request_type=request_type,
        pool_id=pool_id,
        sla_hours=_check_sla(sla_hours),
    )
    session.add(rule)
    await session.flush()
    await audit.record(
        session,
        actor,
        "routing.add",
        "routing_rule",
        rule.id,
        pool_id=pool_id,
        request_type=request_type,
    )
    return rule


async def _rule(session: AsyncSession, clinic_id: str, rule_id: str) -> RoutingRule:
    rule = await session.get(RoutingRule, rule_id)
    if rule is None or rule.clinic_id != clinic_id:
        raise NotFoundError("no such routing rule at this clinic")
    return rule


async def move_rule(
    session: AsyncSession, *, clinic_id: str, rule_id: str, offset: int, actor: str
) -> None:
    """Move a rule up (-1) or down (+1); positions are renumbered 1..n."""
    views = await rules_of(session, clinic_id)
    ids = [v.rule.id for v in views]
    if rule_id not in ids:
        raise NotFoundError("no such routing rule at this clinic")
    i = ids.index(rule_id)
    # Moving a rule changes which pool its requests reach: only towards a watched pool.
    await _watched(session, views[i].pool)
    j = max(0, min(len(ids) - 1, i + offset))
    ids.insert(j, ids.pop(i))
    by_id = {v.rule.id: v.rule for v in views}
    for n, rid in enumerate(ids, start=1):
        by_id[rid].position = n
    await session.flush()
    await audit.record(session, actor, "routing.move", "routing_rule", rule_id, offset=offset)


async def update_rule(
    session: AsyncSession,
    *,
    clinic_id: str,
    rule_id: str,
    pool_id: str,
    sla_hours: int | None,
    actor: str,
) -> None:
    rule = await _rule(session, clinic_id, rule_id)
    await _watched(session, await get_pool(session, clinic_id, pool_id))
    rule.pool_id = pool_id
    rule.sla_hours = _check_sla(sla_hours)
    await session.flush()
    await audit.record(session, actor, "routing.update", "routing_rule", rule.id, pool_id=pool_id)


async def remove_rule(session: AsyncSession, *, clinic_id: str, rule_id: str, actor: str) -> None:
    rule = await _rule(session, clinic_id, rule_id)
    await session.delete(rule)
    await session.flush()
    await audit.record(session, actor, "routing.remove", "routing_rule", rule_id)


async def unrouted_types(session: AsyncSession, clinic_id: str) -> list[str]:
    """Request types no rule catches (their threads would have no pool)."""
    types = {v.rule.request_type for v in await rules_of(session, clinic_id)}
    if ANY_REQUEST in types:
        return []
    return [t for t in REQUEST_TYPES if t not in types]


# -- quick replies ---------------------------------------------------------------------------


async def quick_replies(session: AsyncSession, clinic_id: str) -> Sequence[QuickReply]:
    return (
        await session.scalars(
            select(QuickReply)
            .where(QuickReply.clinic_id == clinic_id)
            .order_by(QuickReply.position, QuickReply.title)
        )
    ).all()


async def add_quick_reply(
    session: AsyncSession, *, clinic_id: str, title: str, body: str, actor: str
) -> QuickReply:
    if not title.strip() or len(title) > 100:
        raise UsageError("a quick reply needs a title of 1 to 100 characters")
    if not body.strip() or len(body) > 5000:
        raise UsageError("a quick reply needs a text of 1 to 5000 characters")
    count = await session.scalar(
        select(func.count()).select_from(QuickReply).where(QuickReply.clinic_id == clinic_id)
    )
    row = QuickReply(clinic_id=clinic_id, title=title.strip(), body=body, position=int(count or 0))
    session.add(row)
    await session.flush()
    await audit.record(session, actor, "quick_reply.create", "quick_reply", row.id)
    return row


async def remove_quick_reply(
    session: AsyncSession, *, clinic_id: str, reply_id: str, actor: str
) -> None:
    result = await session.execute(
        delete(QuickReply)
        .where(QuickReply.id == reply_id, QuickReply.clinic_id == clinic_id)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise NotFoundError("no such quick reply")
    await audit.record(session, actor, "quick_reply.remove", "quick_reply", reply_id)


# -- queues ------------------------------------------------------------------------------------


async def queue(
    session: AsyncSession, pool_id: str, *, include_closed: bool = False
) -> Sequence[Thread]:
    """A pool's threads: urgent first, then by SLA deadline (no deadline last), oldest first."""
    q = select(Thread).where(Thread.pool_id == pool_id)
    if not include_closed:
        q = q.where(Thread.status == "open")
    q = q.order_by(
        Thread.urgent.desc(),
        Thread.sla_due_at.is_(None),
        Thread.sla_due_at,
        Thread.created_at,
    )
    return (await session.scalars(q.limit(500))).all()

"""The clinic's business calendar: when a reply is due, and when the clinic opens again.

A patient message starts a clock of one business day (or ``RoutingRule.sla_hours`` business
hours). Only time inside the clinic's opening hours counts, in the clinic's own timezone, so a
message sent on Friday evening is due on Monday at closing time, and a listed holiday (or a
public holiday of ``Clinic.holiday_country``) is skipped like a weekend. Opening intervals are
built in local wall-clock time and only then converted to UTC, so a daylight-saving change
moves the UTC deadline, never the local one.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.errors import UsageError
from gateway.models import Clinic

log = logging.getLogger("carebridge.sla")

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A clinic whose calendar never opens within this horizon is treated as always open: a thread
# must always get a deadline, and a year without an opening is a configuration mistake.
HORIZON_DAYS = 400

Interval = tuple[time, time]


def _parse_time(value: Any, where: str) -> time:
    if not isinstance(value, str):
        raise UsageError(f"business hours for {where}: times must be strings like '08:00'")
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"business hours for {where}: {value!r} is not a time; use HH:MM, e.g. '08:00'"
        ) from None


def _parse_interval(raw: Any, where: str) -> Interval:
    if not (isinstance(raw, list | tuple) and len(raw) == 2):
        raise UsageError(
            f'business hours for {where}: use a pair of times, e.g. ["08:00", "17:00"]'
        )
    start, end = _parse_time(raw[0], where), _parse_time(raw[1], where)
    if end <= start:
        raise UsageError(f"business hours for {where}: closing time must be after opening time")
    return start, end


def parse_business_hours(doc: dict[str, Any]) -> dict[int, list[Interval]]:
    """``{"mon": ["08:00","17:00"], "sat": [["09:00","12:00"], ...]}`` -> weekday intervals.

    Raises :class:`UsageError` naming the day and the fix, so admin forms and the CLI can show it.
    """
    if not isinstance(doc, dict):
        raise UsageError("business hours must map day names (mon..sun) to opening times")
    out: dict[int, list[Interval]] = {}
    for key, raw in doc.items():
        day = str(key).lower()[:3]
        if day not in DAYS:
            raise UsageError(f"business hours: {key!r} is not a day; use mon, tue, ... sun")
        if raw in (None, [], ""):
            continue
        if isinstance(raw, list | tuple) and raw and isinstance(raw[0], list | tuple):
            intervals = [_parse_interval(r, day) for r in raw]
        else:
            intervals = [_parse_interval(raw, day)]
        intervals.sort()
        for (_, end), (nxt, _) in itertools.pairwise(intervals):
            if nxt < end:
                raise UsageError(f"business hours for {day}: opening periods overlap")
        out[DAYS.index(day)] = intervals
    return out


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"timezone {name!r} is unknown; use an IANA name such as America/Chicago"
        ) from None


def parse_holidays(values: list[str]) -> set[date]:
    out: set[date] = set()
    for v in values:
        try:
            out.add(date.fromisoformat(str(v)))
        except ValueError:
            raise UsageError(f"holiday {v!r} is not an ISO date; use YYYY-MM-DD") from None
    return out


def check_holiday_country(code: str) -> str:
    """Validate a country code for the holidays library ('' means none)."""
    code = code.strip().upper()
    if code and code not in holidays_lib.list_supported_countries():
        raise UsageError(f"holiday country {code!r} is not supported; use an ISO code like US")
    return code


@dataclass(frozen=True)
class Calendar:
    """A clinic's opening hours as data; build it with :func:`calendar_for`."""

    tz: ZoneInfo
    hours: dict[int, list[Interval]]
    closed_dates: frozenset[date]
    country: str

    def is_closed_day(self, day: date) -> bool:
        if day in self.closed_dates:
            return True
        if self.country:
            try:
                return day in holidays_lib.country_holidays(self.country, years=day.year)
            except NotImplementedError:
                log.warning("holiday country %s not supported; ignoring", self.country)
        return False

    def openings(self, start_day: date) -> Iterator[tuple[datetime, datetime]]:
        """Opening intervals in UTC, day by day from ``start_day`` (local), for the horizon."""
        for n in range(HORIZON_DAYS):
            day = start_day + timedelta(days=n)
            if self.is_closed_day(day):
                continue
            for open_t, close_t in self.hours.get(day.weekday(), []):
                yield (
                    datetime.combine(day, open_t, self.tz).astimezone(UTC),
                    datetime.combine(day, close_t, self.tz).astimezone(UTC),
                )


def calendar_for(clinic: Clinic) -> Calendar:
    return Calendar(
        tz=parse_timezone(clinic.timezone or "UTC"),
        hours=parse_business_hours(clinic.business_hours or {}),
        closed_dates=frozenset(parse_holidays(list(clinic.holidays or []))),
        country=(clinic.holiday_country or "").upper(),
    )


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("naive datetime given to the SLA calendar; pass UTC")
    return when.astimezone(UTC)


def _intervals_from(cal: Calendar, when: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Opening intervals that end after ``when``, with the first clipped to start at ``when``."""
    local_day = when.astimezone(cal.tz).date() - timedelta(days=1)
    for start, end in cal.openings(local_day):
        if end <= when:
            continue
        yield max(start, when), end


def is_open(clinic: Clinic, when: datetime) -> bool:
    when = _aware(when)
    for start, _ in _intervals_from(calendar_for(clinic), when):
        return start <= when
    return False


def next_opening(clinic: Clinic, when: datetime) -> datetime:
    """When the clinic is next open at or after ``when`` (``when`` itself if open now)."""
    when = _aware(when)
    for start, _ in _intervals_from(calendar_for(clinic), when):
        return start
    return when


def due_at(clinic: Clinic, start: datetime, business_hours: float | None = None) -> datetime:
    """The reply deadline for a clock started at ``start`` (UTC).

    ``business_hours`` counts only open time. The default, one business day, is the length of
    the opening day the clock starts in (a message at 10:00 in an 08:00-17:00 clinic is due at
    10:00 the next business day; one sent after closing on Friday is due at Monday's closing).
    """
    start = _aware(start)
    cal = calendar_for(clinic)
    intervals = _intervals_from(cal, start)
    first = next(intervals, None)
    if first is None:
        return start + timedelta(hours=business_hours or 24)
    if business_hours is None:
        business_hours = _day_length_hours(cal, first[0])
    remaining = timedelta(hours=business_hours)
    segment: tuple[datetime, datetime] | None = first
    last_end = first[1]
    while segment is not None:
        seg_start, seg_end = segment
        last_end = seg_end
        if seg_end - seg_start >= remaining:
            return seg_start + remaining
        remaining -= seg_end - seg_start
        segment = next(intervals, None)
    return last_end + remaining


def _day_length_hours(cal: Calendar, opening: datetime) -> float:
    """Total opening time of the local day containing ``opening``."""
    day = opening.astimezone(cal.tz).date()
    total = timedelta()
    for open_t, close_t in cal.hours.get(day.weekday(), []):
        total += datetime.combine(day, close_t, cal.tz) - datetime.combine(day, open_t, cal.tz)
    return total.total_seconds() / 3600 or 24.0


def deadlines(
    clinic: Clinic,
    start: datetime,
    business_hours: float | None = None,
    warn_fraction: float = 0.75,
) -> tuple[datetime, datetime]:
    """``(warn_at, due_at)``: the warning falls at ``warn_fraction`` of the business time.

    Counting business time (not wall-clock) matters: for a Friday-evening message the pool is
    warned on Monday afternoon, not on Sunday night when nobody is there to act.
    """
    start = _aware(start)
    cal = calendar_for(clinic)
    first = next(_intervals_from(cal, start), None)
    if business_hours is None:
        business_hours = _day_length_hours(cal, first[0]) if first else 24.0
    return (
        due_at(clinic, start, business_hours * warn_fraction),
        due_at(clinic, start, business_hours),
    )


def format_hours(doc: dict[str, Any]) -> dict[str, str]:
    """``{"mon": "08:00-12:00,13:00-17:00", ...}`` for forms and listings ('' = closed)."""
    parsed = parse_business_hours(doc or {})
    return {
        day: ",".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in parsed.get(i, []))
        for i, day in enumerate(DAYS)
    }


def hours_from_text(values: dict[str, str]) -> dict[str, Any]:
    """The inverse of :func:`format_hours`: what a form or the CLI gives, as stored JSON."""
    out: dict[str, Any] = {}
    for day, text in values.items():
        text = text.strip()
        if not text:
            continue
        periods = []
        for part in text.split(","):
            start, sep, end = part.strip().partition("-")
            if not sep:
                raise UsageError(
                    f"business hours for {day}: write opening periods like 08:00-17:00"
                )
            periods.append([start.strip(), end.strip()])
        out[day] = periods[0] if len(periods) == 1 else periods
    parse_business_hours(out)  # validates, naming the day and the fix
    return out


async def update_calendar(
    session: AsyncSession,
    clinic: Clinic,
    *,
    timezone: str | None = None,
    business_hours: dict[str, Any] | None = None,
    holidays: list[str] | None = None,
    holiday_country: str | None = None,
    actor: str,
) -> Clinic:
    """Change a clinic's calendar; everything is validated before anything is changed.

    Running SLA clocks keep the deadline they were given: a new calendar applies to clocks
    started from now on (a patient was already told when to expect a reply).
    """
    if timezone is not None:
        parse_timezone(timezone)
    if business_hours is not None:
        parse_business_hours(business_hours)
    dates = (
        sorted(d.isoformat() for d in parse_holidays(holidays)) if holidays is not None else None
    )
    country = check_holiday_country(holiday_country) if holiday_country is not None else None
    if timezone is not None:
        clinic.timezone = timezone
    if business_hours is not None:
        clinic.business_hours = business_hours
    if dates is not None:
        clinic.holidays = dates
    if country is not None:
        clinic.holiday_country = country
    await session.flush()
    await audit.record(session, actor, "clinic.calendar", "clinic", clinic.id)
    return clinic

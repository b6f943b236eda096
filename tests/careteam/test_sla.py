"""The business calendar: deadlines in the clinic's local time, skipping nights, weekends and
holidays, and the reopening time told to out-of-hours writers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.careteam import sla
from gateway.errors import UsageError
from gateway.models import Clinic

CHI = ZoneInfo("America/Chicago")
HOURS = {d: ["08:00", "17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}


def clinic(**kw: object) -> Clinic:
    kw.setdefault("timezone", "America/Chicago")
    kw.setdefault("business_hours", HOURS)
    kw.setdefault("holidays", [])
    kw.setdefault("holiday_country", "")
    return Clinic(**kw)


def local(y: int, m: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=CHI).astimezone(UTC)


def test_friday_evening_is_due_monday_at_closing() -> None:
    # 2026-03-06 is a Friday.
    due = sla.due_at(clinic(), local(2026, 3, 6, 17, 30))
    assert due.astimezone(CHI) == datetime(2026, 3, 9, 17, 0, tzinfo=CHI)


def test_listed_holiday_moves_the_deadline_to_the_next_business_day() -> None:
    due = sla.due_at(clinic(holidays=["2026-03-09"]), local(2026, 3, 6, 17, 30))
    assert due.astimezone(CHI) == datetime(2026, 3, 10, 17, 0, tzinfo=CHI)


def test_country_holiday_is_skipped() -> None:
    # Memorial Day 2026 is Monday 25 May (US).
    due = sla.due_at(clinic(holiday_country="US"), local(2026, 5, 22, 18, 0))
    assert due.astimezone(CHI) == datetime(2026, 5, 26, 17, 0, tzinfo=CHI)


def test_midday_message_is_due_same_time_next_business_day() -> None:
    due = sla.due_at(clinic(), local(2026, 3, 4, 10, 0))
    assert due.astimezone(CHI) == datetime(2026, 3, 5, 10, 0, tzinfo=CHI)


def test_custom_business_hours_per_request_type() -> None:
    due = sla.due_at(clinic(), local(2026, 3, 4, 15, 0), business_hours=4)
    assert due.astimezone(CHI) == datetime(2026, 3, 5, 10, 0, tzinfo=CHI)


def test_dst_change_keeps_local_closing_time() -> None:
    # US DST starts Sunday 2026-03-08: Monday's 17:00 is 22:00 UTC, not 23:00.
    due = sla.due_at(clinic(), local(2026, 3, 6, 17, 30))
    assert due == datetime(2026, 3, 9, 22, 0, tzinfo=UTC)


def test_next_opening_and_is_open() -> None:
    c = clinic()
    assert not sla.is_open(c, local(2026, 3, 7, 11, 0))  # Saturday
    assert sla.next_opening(c, local(2026, 3, 7, 11, 0)).astimezone(CHI) == datetime(
        2026, 3, 9, 8, 0, tzinfo=CHI
    )
    assert sla.is_open(c, local(2026, 3, 9, 8, 0))
    assert sla.next_opening(c, local(2026, 3, 9, 9, 0)) == local(2026, 3, 9, 9, 0)


def test_warning_falls_at_three_quarters_of_business_time() -> None:
    warn, due = sla.deadlines(clinic(), local(2026, 3, 6, 17, 30))
    assert due.astimezone(CHI) == datetime(2026, 3, 9, 17, 0, tzinfo=CHI)
    assert warn.astimezone(CHI) == datetime(2026, 3, 9, 14, 45, tzinfo=CHI)


def test_closed_clinic_still_gets_a_deadline() -> None:
    start = local(2026, 3, 4, 10, 0)
    assert sla.due_at(clinic(business_hours={}), start) == start + timedelta(hours=24)
    assert sla.due_at(clinic(business_hours={}), start, 5) == start + timedelta(hours=5)


@pytest.mark.parametrize(
    "hours",
    [
        {"mon": ["17:00", "08:00"]},
        {"funday": ["08:00", "17:00"]},
        {"mon": ["8am", "5pm"]},
        {"mon": [["08:00", "12:00"], ["11:00", "17:00"]]},
        {"mon": "08:00-17:00"},
    ],
)
def test_bad_business_hours_are_refused_clearly(hours: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="business hours"):
        sla.parse_business_hours(hours)


def test_split_day_hours() -> None:
    c = clinic(business_hours={"mon": [["08:00", "12:00"], ["13:00", "17:00"]]})
    # Monday 11:00 + 2 business hours skips the lunch break.
    due = sla.due_at(c, local(2026, 3, 9, 11, 0), business_hours=2)
    assert due.astimezone(CHI) == datetime(2026, 3, 9, 14, 0, tzinfo=CHI)

"""Tick computation: cron in time zones across daylight saving changes, intervals, missed ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor.cron import check_cron, check_timezone, due_ticks, next_tick
from conveyor.errors import InvalidOption

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def fired(cron: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Every tick in (start, end], as the scheduler would fire them with backfill."""
    return due_ticks(
        cron=cron, every=None, tz=tz, anchor=start, last_tick=None, now=end,
        missed="backfill", backfill_limit=10_000,
    )  # fmt: skip


def local(ticks: list[datetime], zone: ZoneInfo) -> list[str]:
    return [t.astimezone(zone).strftime("%m-%d %H:%M %Z") for t in ticks]


def test_spring_forward_in_paris_runs_a_skipped_daily_time_once_after_the_gap() -> None:
    ticks = fired(
        "30 2 * * *", "Europe/Paris",
        datetime(2026, 3, 28, 12, tzinfo=PARIS), datetime(2026, 3, 30, 12, tzinfo=PARIS),
    )  # fmt: skip
    assert local(ticks, PARIS) == ["03-29 03:00 CEST", "03-30 02:30 CEST"]


def test_fall_back_in_paris_runs_a_repeated_daily_time_once() -> None:
    ticks = fired(
        "30 2 * * *", "Europe/Paris",
        datetime(2026, 10, 24, 12, tzinfo=PARIS), datetime(2026, 10, 26, 12, tzinfo=PARIS),
    )  # fmt: skip
    assert local(ticks, PARIS) == ["10-25 02:30 CEST", "10-26 02:30 CET"]


def test_fall_back_in_new_york_daily_once_but_half_hourly_through_both_hours() -> None:
    start = datetime(2026, 11, 1, 0, 45, tzinfo=NEW_YORK)
    end = datetime(2026, 11, 1, 2, 15, tzinfo=NEW_YORK)
    daily = fired("30 1 * * *", "America/New_York", start, start + timedelta(days=1))
    assert local(daily, NEW_YORK) == ["11-01 01:30 EDT"]
    half_hourly = fired("*/30 * * * *", "America/New_York", start, end)
    assert local(half_hourly, NEW_YORK) == [
        "11-01 01:00 EDT", "11-01 01:30 EDT", "11-01 01:00 EST", "11-01 01:30 EST",
        "11-01 02:00 EST",
    ]  # fmt: skip
    assert half_hourly == sorted(set(half_hourly))  # real, distinct instants 30 minutes apart


def test_spring_forward_in_new_york() -> None:
    ticks = fired(
        "0 2 * * *", "America/New_York",
        datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), datetime(2026, 3, 9, 12, tzinfo=NEW_YORK),
    )  # fmt: skip
    assert local(ticks, NEW_YORK) == ["03-08 03:00 EDT", "03-09 02:00 EDT"]


def test_seconds_field_and_weekdays() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert len(fired("*/10 * * * * *", "UTC", start, start + timedelta(minutes=1))) == 6
    weekdays = fired("0 8 * * 1-5", "UTC", start, start + timedelta(days=7))
    assert [t.strftime("%a") for t in weekdays] == ["Thu", "Fri", "Mon", "Tue", "Wed"]


def test_skip_fires_only_the_newest_missed_tick_and_backfill_is_bounded() -> None:
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    now = anchor + timedelta(hours=5, minutes=1)
    skip = due_ticks(cron="0 * * * *", every=None, tz="UTC", anchor=anchor, last_tick=None,
                     now=now, missed="skip", backfill_limit=10)  # fmt: skip
    assert skip == [anchor + timedelta(hours=5)]
    back = due_ticks(cron="0 * * * *", every=None, tz="UTC", anchor=anchor, last_tick=None,
                     now=now, missed="backfill", backfill_limit=3)  # fmt: skip
    assert back == [anchor + timedelta(hours=h) for h in (3, 4, 5)]
    done = due_ticks(cron="0 * * * *", every=None, tz="UTC", anchor=anchor,
                     last_tick=anchor + timedelta(hours=5), now=now, missed="backfill",
                     backfill_limit=3)  # fmt: skip
    assert done == []


def test_interval_ticks_count_from_the_anchor() -> None:
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    ticks = due_ticks(
        cron=None,
        every=90,
        tz="UTC",
        anchor=anchor,
        last_tick=None,
        now=anchor + timedelta(seconds=300),
        missed="backfill",
        backfill_limit=10,
    )
    assert [(t - anchor).total_seconds() for t in ticks] == [90, 180, 270]
    upcoming = next_tick(cron=None, every=90, tz="UTC", anchor=anchor,
                         now=anchor + timedelta(seconds=300))  # fmt: skip
    assert upcoming == anchor + timedelta(seconds=360)


@pytest.mark.parametrize("expr", ["", "bad", "61 * * * *", "0 0 30 2 *", "* * *", 7])
def test_bad_cron_expressions(expr: object) -> None:
    with pytest.raises(InvalidOption):
        check_cron(expr)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "UTC+25", None])
def test_bad_time_zones(tz: object) -> None:
    with pytest.raises(InvalidOption):
        check_timezone(tz)

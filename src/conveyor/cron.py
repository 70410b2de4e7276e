"""When recurring jobs fall due: cron expressions in a time zone, and fixed intervals.

Pure rules: the clock is an argument. Cron expressions have five fields, or six with a trailing
seconds field, and are evaluated by cronsim, which handles daylight saving time as cron does: a
daily job in a skipped hour runs once at the first valid time after it, and one in a repeated hour
runs once, while schedules finer than an hour keep firing through both copies of the hour.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from conveyor.errors import InvalidOption

# How far ahead a cron expression must fire at least once to be accepted.
NEVER_AFTER = timedelta(days=366 * 5)
MISSED_POLICIES = ("skip", "backfill")


def check_timezone(tz: object) -> str:
    """An IANA time zone name, e.g. ``Europe/Paris``."""
    if not isinstance(tz, str) or not tz:
        raise InvalidOption("tz must be an IANA time zone name such as 'Europe/Paris'")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidOption(f"unknown time zone {tz!r}") from None
    return tz


def check_cron(expr: object, tz: str = "UTC") -> str:
    """A cron expression that parses and fires at least once in the next five years."""
    if not isinstance(expr, str) or not expr.strip():
        raise InvalidOption("cron must be a string such as '0 8 * * 1-5'")
    expr = " ".join(expr.split())
    try:
        first = next(CronSim(expr, datetime.now(ZoneInfo(tz))))
    except (CronSimError, StopIteration) as exc:
        raise InvalidOption(
            f"invalid cron expression {expr!r}: {exc or 'it never fires'}"
        ) from None
    if first - datetime.now(UTC) > NEVER_AFTER:
        raise InvalidOption(f"cron expression {expr!r} does not fire in the next five years")
    return expr


def _cron_back(expr: str, tz: str, now: datetime) -> Iterator[datetime]:
    """Ticks at or before ``now`` (and perhaps one just after), newest first."""
    start = now.astimezone(ZoneInfo(tz)) + timedelta(seconds=1)  # the reverse walk excludes it
    for tick in CronSim(expr, start, reverse=True):
        yield tick.astimezone(UTC)


def due_ticks(
    *,
    cron: str | None,
    every: float | None,
    tz: str,
    anchor: datetime,
    last_tick: datetime | None,
    now: datetime,
    missed: str,
    backfill_limit: int,
) -> list[datetime]:
    """The ticks to fire now, oldest first: those after ``last_tick`` (or, for a schedule that
    never fired, after ``anchor``, its creation) and at or before ``now``. With ``skip`` only the
    newest of them fires; with ``backfill`` up to ``backfill_limit`` of the newest."""
    after = last_tick or anchor
    keep = 1 if missed == "skip" else backfill_limit
    ticks: list[datetime] = []
    if every is not None:
        count = math.floor((now - anchor).total_seconds() / every)
        while count >= 1 and len(ticks) < keep:
            tick = anchor + timedelta(seconds=count * every)
            if tick <= after:
                break
            ticks.append(tick)
            count -= 1
    else:
        assert cron is not None
        for tick in _cron_back(cron, tz, now):
            if tick > now:
                continue
            if tick <= after or len(ticks) >= keep:
                break
            ticks.append(tick)
    return sorted(ticks)


def next_tick(
    *, cron: str | None, every: float | None, tz: str, anchor: datetime, now: datetime
) -> datetime:
    """The first tick after ``now``."""
    if every is not None:
        count = math.floor((now - anchor).total_seconds() / every) + 1
        return anchor + timedelta(seconds=max(count, 1) * every)
    assert cron is not None
    return next(CronSim(cron, now.astimezone(ZoneInfo(tz)))).astimezone(UTC)


# A crontab line: five cron fields (or six, seconds last), a queue, optional JSON data, and
# optional ?key=value&... settings: tz, name, missed, backfill_limit and any job option.
#   0 9 10 * * bills.monthly ?tz=Asia/Ulaanbaatar
#   */15 * * * * reports.refresh {"full": false} ?name=refresh&priority=3
_CRON_FIELD = re.compile(r"[\d*/,\-A-Za-z?LW#]+")
_SCHEDULE_SETTINGS = ("tz", "name", "missed", "backfill_limit")


@dataclass(frozen=True, slots=True)
class CrontabEntry:
    """One parsed crontab line."""

    name: str
    cron: str
    queue: str
    data: Any
    settings: dict[str, Any]
    options: dict[str, Any]


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_crontab(text: str) -> list[CrontabEntry]:
    """Parse crontab text; blank lines and ``#`` comments are skipped. Errors name the line."""
    entries: list[CrontabEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entries.append(_parse_line(line))
        except (InvalidOption, ValueError) as exc:
            raise InvalidOption(f"crontab line {number}: {exc}") from None
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidOption(f"crontab names {', '.join(twice)} twice: add ?name=... to tell apart")
    return entries


def _parse_line(line: str) -> CrontabEntry:
    query = ""
    if " ?" in line:
        line, query = line.rsplit(" ?", 1)
    tokens = line.split(None, 6)
    if len(tokens) < 6:
        raise InvalidOption("expected five cron fields and a queue")
    fields = 6 if len(tokens) >= 7 and _CRON_FIELD.fullmatch(tokens[5]) else 5
    rest = line.split(None, fields)
    cron, tail = " ".join(rest[:fields]), rest[fields] if len(rest) > fields else ""
    queue, _, data_text = tail.partition(" ")
    if not queue:
        raise InvalidOption("expected a queue after the cron fields")
    data = json.loads(data_text) if data_text.strip() else None
    settings: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(
            query)):  # fmt: skip
        target = settings if key in _SCHEDULE_SETTINGS else options
        target[key] = value if key in ("tz", "name", "missed") else _value(value)
    return CrontabEntry(
        name=str(settings.pop("name", queue)),
        cron=cron,
        queue=queue,
        data=data,
        settings=settings,
        options=options,
    )

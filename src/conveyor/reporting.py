"""Shape raw statistics rows into the public records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from conveyor.models import JobState, QueueStats, StatsMinute


def queue_stats(rows: Iterable[dict[str, Any]]) -> list[QueueStats]:
    """One :class:`QueueStats` per queue from (queue, state, n, oldest_waiting_seconds) rows."""
    counts: dict[str, dict[JobState, int]] = {}
    oldest: dict[str, float | None] = {}
    paused: dict[str, bool] = {}
    for row in rows:
        name = row["queue"]
        paused[name] = bool(row.get("paused"))
        per_state = counts.setdefault(name, dict.fromkeys(JobState, 0))
        oldest.setdefault(name, None)
        if row["state"] is not None:
            per_state[JobState(row["state"])] += int(row["n"])
        wait = row["oldest_waiting_seconds"]
        if wait is not None:
            current = oldest[name]
            oldest[name] = max(wait, 0.0) if current is None else max(current, wait)
    return [QueueStats(name, counts[name], oldest[name], paused[name]) for name in counts]


def wait_percentile(
    counts: Mapping[int, int], share: float, bounds: Sequence[float]
) -> float | None:
    """The wait in milliseconds below which ``share`` of the counted jobs fall; None if none.

    ``counts`` maps a bucket, numbered as PostgreSQL's ``width_bucket`` numbers them against
    ``bounds`` (0 below the first bound, i from ``bounds[i-1]`` up to ``bounds[i]``,
    ``len(bounds)`` from the last bound up), to its jobs; negative buckets (jobs that never
    started) are left out. The value is interpolated linearly within its bucket; in the last,
    unbounded one it is that bucket's lower bound.
    """
    started = sorted((b, n) for b, n in counts.items() if b >= 0 and n > 0)
    total = sum(n for _, n in started)
    if total == 0:
        return None
    rank = min(share, 1.0) * total
    seen = 0
    position = 0
    while position < len(started) - 1 and seen + started[position][1] < rank:
        seen += started[position][1]
        position += 1
    bucket, n = started[position]
    low = 0.0 if bucket == 0 else bounds[bucket - 1]
    if bucket >= len(bounds):
        return low
    return low + (bounds[bucket] - low) * max(rank - seen, 0.0) / n


def stats_series(rows: Iterable[dict[str, Any]], bounds: Sequence[float]) -> list[StatsMinute]:
    """One :class:`StatsMinute` per minute, in the order of ``rows``: (minute, bucket, completed,
    failed, cancelled, retried, backlog), one per wait bucket of the minute (bucket None when no
    job finished in it)."""
    minutes: dict[datetime, tuple[list[int], dict[int, int], int | None]] = {}
    for row in rows:
        totals, waits, _ = minutes.setdefault(row["minute"], ([0, 0, 0, 0], {}, row["backlog"]))
        if row["bucket"] is None:
            continue
        for i, name in enumerate(("completed", "failed", "cancelled", "retried")):
            totals[i] += int(row[name])
        waits[row["bucket"]] = int(row["completed"]) + int(row["failed"]) + int(row["cancelled"])
    return [
        StatsMinute(
            minute=minute,
            completed=totals[0],
            failed=totals[1],
            cancelled=totals[2],
            retried=totals[3],
            wait_p50_ms=wait_percentile(waits, 0.5, bounds),
            wait_p95_ms=wait_percentile(waits, 0.95, bounds),
            backlog=backlog,
        )
        for minute, (totals, waits, backlog) in minutes.items()
    ]

"""Shape raw statistics rows into the public records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conveyor.models import JobState, QueueStats


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

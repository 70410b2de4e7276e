"""What the dashboard derives from jobs and worker heartbeats: which active jobs are only claimed
(waiting in a worker's prefetch buffer) and which run, each attempt's timeline, a flow's tree.

Everything here works on the JSON shapes of :mod:`conveyor.web.encode`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

CLAIMED = "claimed"
RUNNING = "running"


def _when(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def unstarted_claims(workers: Iterable[dict[str, Any]]) -> set[str]:
    """The ``"<job id>/<attempt>"`` claims the workers' last heartbeats saw waiting to start."""
    found: set[str] = set()
    for worker in workers:
        claims = (worker.get("metadata") or {}).get("unstarted")
        if isinstance(claims, list):
            found.update(c for c in claims if isinstance(c, str))
    return found


def phase(job: dict[str, Any], unstarted: set[str]) -> str | None:
    """``claimed`` or ``running`` for an active job (as of its worker's last heartbeat), else
    None."""
    if job["state"] != "active":
        return None
    return CLAIMED if f"{job['id']}/{job['attempt']}" in unstarted else RUNNING


def split_active(jobs: Iterable[dict[str, Any]], unstarted: set[str]) -> dict[str, dict[str, int]]:
    """Per queue, how many of these active jobs are claimed and how many run."""
    counts: dict[str, dict[str, int]] = {}
    for job in jobs:
        found = phase(job, unstarted)
        if found is not None:
            per_queue = counts.setdefault(job["queue"], {CLAIMED: 0, RUNNING: 0})
            per_queue[found] += 1
    return counts


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def attempts(job: dict[str, Any], unstarted: set[str], now: datetime) -> list[dict[str, Any]]:
    """One entry per attempt, oldest first: when it was claimed, started and finished, by which
    worker, how long it took, its outcome and its error.

    Failed attempts come from the job's error history (their start times are recorded by
    workers of this release; older entries have only the end). The current attempt follows if
    it was claimed after the last error: running, claimed, or how it ended.
    """
    entries: list[dict[str, Any]] = []
    for error in job["errors"]:
        claimed, started, finished = (
            _when(error.get("claimed_at")),
            _when(error.get("started_at")),
            _when(error.get("at")),
        )
        entries.append(
            {
                "attempt": error.get("attempt"),
                "worker": error.get("worker"),
                "claimed_at": claimed,
                "started_at": started,
                "finished_at": finished,
                "seconds": _seconds(started or claimed, finished),
                "outcome": "released" if error.get("type") == "ClaimReleased" else "failed",
                "error": error,
            }
        )
    claimed = _when(job.get("started_at"))
    last_end = entries[-1]["finished_at"] if entries else None
    if claimed is not None and (last_end is None or claimed > last_end):
        finished = _when(job.get("finished_at"))
        outcome = phase(job, unstarted) or job["state"]
        entries.append(
            {
                "attempt": job["attempt"],
                "worker": job.get("worker_id"),
                "claimed_at": claimed,
                "started_at": None,
                "finished_at": finished,
                "seconds": _seconds(claimed, finished or now),
                "outcome": outcome,
                "error": None,
            }
        )
    return entries


def flow_tree(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flow's jobs as a tree from its first job (the top): each node is ``{"job", "children",
    "seen"}``, children in ``depends_on`` order; a job reached twice (a shared dependency) is
    listed again with ``seen`` and no children, so the tree stays finite."""
    if not jobs:
        return []
    by_id = {job["id"]: job for job in jobs}
    placed: set[str] = set()

    def node(job: dict[str, Any]) -> dict[str, Any]:
        if job["id"] in placed:
            return {"job": job, "children": [], "seen": True}
        placed.add(job["id"])
        below = [by_id[i] for i in job.get("depends_on") or [] if i in by_id]
        return {"job": job, "children": [node(child) for child in below], "seen": False}

    return [node(jobs[0])]

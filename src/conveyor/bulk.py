"""Bulk actions on the jobs a filter matches: which states each action applies to, and the
validation of a filter into the store's parameters.

An action changes jobs in bounded batches (``batch_size`` rows per statement and transaction,
rows locked by another transaction skipped), so it never holds many locks for long; the count
taken first is what a dry run reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from conveyor.errors import InvalidOption
from conveyor.models import JobState
from conveyor.options import (
    INT32,
    check_int,
    check_key,
    check_queue_name,
    check_seconds,
    search_pattern,
)

LIVE = frozenset({JobState.WAITING, JobState.CREATED, JobState.RETRY, JobState.ACTIVE})
# Live jobs that no worker holds.
LIVE_QUEUED = (JobState.WAITING, JobState.CREATED, JobState.RETRY)

# The states each action can change, in the order they are listed to a user. A running job can
# be cancelled (its worker is told), but not retried, deleted or re-prioritised.
ACTION_STATES: dict[str, tuple[JobState, ...]] = {
    "cancel": (*LIVE_QUEUED, JobState.ACTIVE),
    "retry": (JobState.CREATED, JobState.RETRY, JobState.FAILED, JobState.CANCELLED),
    "delete": (*LIVE_QUEUED, JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED),
    "reprioritize": LIVE_QUEUED,
}
ACTIONS = tuple(ACTION_STATES)
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class BulkFilter:
    """A validated filter: the store's parameters for the live table and the history."""

    live_states: list[str]
    history_states: list[str]
    queue: str | None
    older_than: float | None
    search: str | None
    group_key: str | None

    def params(self) -> dict[str, Any]:
        """The parameters every bulk statement shares."""
        return {"queue": self.queue, "search": self.search, "group_key": self.group_key}


# The statements of each action, and which of the filter's states each one walks: the live
# table's or the history's.
STEPS: dict[str, tuple[tuple[str, bool], ...]] = {
    "cancel": (("job_bulk_cancel", True),),
    "retry": (("job_bulk_retry_live", True), ("job_bulk_retry_history", False)),
    "delete": (("job_bulk_delete_live", True), ("job_bulk_delete_history", False)),
    "reprioritize": (("job_bulk_reprioritize", True),),
}


def steps(action: str, found: BulkFilter) -> list[tuple[str, list[str]]]:
    """(statement, states) for each table the action walks, in order; tables the filter's
    states leave out are skipped."""
    out = []
    for name, live in STEPS[action]:
        states = found.live_states if live else found.history_states
        if states:
            out.append((name, states))
    return out


def bulk_filter(
    action: str,
    *,
    queue: str | None,
    state: str | Iterable[str] | None,
    older_than: float | timedelta | None,
    search: str | None,
    group_key: str | None,
) -> BulkFilter:
    """Check an action and its filter. At least one criterion is required (a filter that
    matches everything is spelled out with ``state``); ``state`` must name states the action
    applies to, and defaults to all of them."""
    if not isinstance(action, str) or action not in ACTION_STATES:
        raise InvalidOption(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if all(v is None for v in (queue, state, older_than, search, group_key)):
        raise InvalidOption(
            "a bulk action needs a filter: queue, state, older_than, search or group_key"
        )
    allowed = ACTION_STATES[action]
    names = ", ".join(s.value for s in allowed)
    if state is None:
        states = list(allowed)
    else:
        if isinstance(state, str):
            given: list[object] = [state]
        elif isinstance(state, Iterable) and not isinstance(state, Mapping):
            given = list(state)
        else:
            raise InvalidOption(f"state must be a state name or a list of them: {names}")
        if not given:
            raise InvalidOption(f"state must name at least one of {names}")
        states = []
        for name in given:
            found = next((s for s in JobState if s.value == name), None)
            if found is None:
                raise InvalidOption(f"state must be one of {names}, got {name!r}")
            if found not in allowed:
                raise InvalidOption(f"{action} applies to {names} jobs, not {found.value} ones")
            states.append(found)
    return BulkFilter(
        live_states=sorted({s.value for s in states if s in LIVE}),
        history_states=sorted({s.value for s in states if s not in LIVE}),
        queue=None if queue is None else check_queue_name(queue),
        older_than=(
            None if older_than is None else check_seconds("older_than", older_than, allow_zero=True)
        ),
        search=search_pattern(search),
        group_key=None if group_key is None else check_key("group_key", group_key),
    )


def check_priority(priority: object) -> int:
    """The new priority of ``reprioritize``: any 32-bit integer, as at send."""
    return check_int("priority", priority, *INT32)


def check_batch_size(batch_size: object) -> int:
    """Rows changed per statement: 1 to 10,000."""
    return check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)

"""Time as an input: every query that depends on "now" takes it from a clock.

The default clock returns ``None``, which the SQL reads as "the database's ``now()``": one clock for
every process, immune to skew between hosts. Tests pass a :class:`FrozenClock` and move it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime | None]


def database_clock() -> datetime | None:
    """Defer to the database server's clock."""
    return None


class FrozenClock:
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move the clock forward and return the new time."""
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        self._now += delta
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to an absolute (aware) time."""
        if when.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self._now = when

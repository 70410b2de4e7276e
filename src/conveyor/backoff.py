"""How long to wait before the next attempt of a failed job: pure rules, randomness injected."""

from __future__ import annotations

import random
from collections.abc import Callable

# Exponential delays are spread by up to this fraction, so jobs that failed together (an outage)
# do not all come back in the same instant.
JITTER = 0.1

RetryPolicy = Callable[[int, BaseException], float | None]
"""A custom policy: (attempt that failed, its error) -> seconds to wait, or None to stop."""


def retry_delay(
    attempt: int,
    *,
    kind: str,
    delay: float,
    delay_max: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds before the attempt after ``attempt`` (1-based) may start.

    ``fixed``: ``delay`` each time; ``linear``: ``delay * attempt``; ``exponential``:
    ``delay * 2 ** (attempt - 1)``, less up to 10% jitter. All are capped at ``delay_max``.
    """
    if kind == "fixed":
        seconds = delay
    elif kind == "linear":
        seconds = delay * attempt
    elif kind == "exponential":
        seconds = delay * 2.0 ** min(attempt - 1, 64)
        if delay_max is not None:
            seconds = min(seconds, delay_max)
        seconds *= 1.0 - JITTER * rng()
    else:
        raise ValueError(f"unknown backoff kind {kind!r}")
    if delay_max is not None:
        seconds = min(seconds, delay_max)
    return max(seconds, 0.0)

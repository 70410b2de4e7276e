"""Supervision of a worker's background services (completer, heartbeat, listener, recovery,
scheduler): a service that raises is logged with its traceback, reported, and started again after
a growing, jittered delay, so one bad row or one unexpected error never ends it for good.

A service that returns before the worker stops counts as a crash too: every service is meant to
run until stopped. The worker asks :attr:`Supervisor.essential_up` before it fetches, so it never
claims jobs while its completer (which writes their outcomes) or its heartbeat is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.worker")

Run = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(slots=True)
class ServiceState:
    """What the supervisor knows of one service."""

    name: str
    essential: bool
    up: bool = False
    restarts: int = 0
    last_error: str | None = None
    down_since: float | None = None


class Supervisor:
    """Runs services until stopped, restarting each one that crashes."""

    def __init__(
        self,
        on_error: Callable[[str, BaseException], None],
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 30.0,
    ) -> None:
        self._on_error = on_error
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.states: dict[str, ServiceState] = {}
        self.essential_up = asyncio.Event()
        self.essential_up.set()

    def start(self, name: str, run: Run, *, essential: bool = False) -> None:
        """Run ``run(stop)`` under supervision; ``essential`` services gate fetching."""
        state = ServiceState(name, essential, up=True)
        self.states[name] = state
        self._tasks.append(asyncio.create_task(self._supervise(state, run), name=name))

    def down(self) -> list[str]:
        """Names of the services that are down now (crashed, waiting to restart)."""
        return [s.name for s in self.states.values() if not s.up]

    async def _supervise(self, state: ServiceState, run: Run) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await run(self._stop)
                if self._stop.is_set():
                    return
                raise RuntimeError(f"service {state.name} returned before the worker stopped")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A service that ran a good while before failing starts again from the shortest
                # delay: it was a new failure, not a crash loop.
                failures = 1 if time.monotonic() - started > self._max_backoff else failures + 1
                delay = min(self._max_backoff, self._min_backoff * 2 ** (failures - 1))
                delay *= 0.75 + random.random() / 2
                state.up = False
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                state.down_since = time.monotonic()
                self._refresh()
                log.error(
                    "service %s crashed (restart %d in %.2fs)", state.name, state.restarts, delay,
                    exc_info=exc,
                )  # fmt: skip
                self._on_error(state.name, exc)
                await first_of(self._stop.wait(), asyncio.sleep(delay))
                if self._stop.is_set():
                    return
                state.up = True
                state.down_since = None
                self._refresh()
                log.info("service %s restarted", state.name)

    def _refresh(self) -> None:
        if all(s.up for s in self.states.values() if s.essential):
            self.essential_up.set()
        else:
            self.essential_up.clear()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop every service; one still running after ``timeout`` seconds is cancelled."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

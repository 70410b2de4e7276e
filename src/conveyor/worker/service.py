"""The contract of the background loops a worker runs beside its jobs (recovery, cron, ...).

The worker knows no service by name: the app hands it a list. A service must tolerate a stop that
comes before it started, and being stopped twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from conveyor._store.worker_store import WorkerStore
from conveyor.events import Events


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What a service may use: the worker's store and identity, the events, the clock, and
    after how many seconds of silence a worker is presumed dead."""

    store: WorkerStore
    worker_id: UUID
    events: Events
    clock: Callable[[], datetime | None]
    stale_after: float = 30.0


class Service(Protocol):
    """A background loop run by every worker."""

    async def run(self, context: ServiceContext, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        ...

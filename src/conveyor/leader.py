"""Leadership as a lease row: one holder per role, renewed before it expires.

Unlike a session advisory lock, a lease survives PgBouncer's transaction pooling and is scoped to
the schema. A leader that stops renewing (crash, partition) loses the role after ``ttl`` seconds,
or as soon as its worker's heartbeat is ``stale_after`` seconds old, whichever comes first: so the
jobs of a dead leader are recovered as fast as those of any dead worker.
"""

from __future__ import annotations

from uuid import UUID

from conveyor._store.worker_store import WorkerStore


class Lease:
    """The lease of one role, for one holder."""

    def __init__(
        self, store: WorkerStore, role: str, holder: UUID, ttl: float, stale_after: float
    ) -> None:
        self._store = store
        self.role = role
        self.holder = holder
        self.ttl = ttl
        self.stale_after = stale_after

    async def hold(self) -> bool:
        """Take or renew the lease; True while this holder is the leader."""
        return await self._store.leader_acquire(self.role, self.holder, self.ttl, self.stale_after)

    async def release(self) -> None:
        """Give the role up so another worker can take it without waiting for expiry."""
        await self._store.leader_release(self.role, self.holder)

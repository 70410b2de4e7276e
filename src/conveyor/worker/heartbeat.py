"""The worker's heartbeat: it tells the database the worker is alive (with its health), finds
the attempts it lost while a NOTIFY was missed or while it was frozen or cut off, registers
again when it learns it was presumed dead, and hands back the jobs it holds without knowing (a
claim whose answer was lost).

Claims wait in the local buffer only while the last heartbeat is recent (see
:meth:`WorkerState.claims_fresh`); a slot that finds them stale sets ``verify_claims``, which
makes the heartbeat go at once instead of at its interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from conveyor._store.worker_store import Ack
from conveyor.errors import DatabaseUnavailable
from conveyor.worker.state import WorkerState
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.worker")


class Heartbeat:
    """The heartbeat loop, run by the supervisor as an essential service."""

    def __init__(
        self,
        state: WorkerState,
        health: Callable[[], dict[str, Any]],
        cancel: Callable[[uuid.UUID, int], None],
    ) -> None:
        self._state = state
        self._health = health
        self._cancel = cancel

    async def register(self) -> None:
        """Register the worker (again, after it was presumed dead)."""
        state = self._state
        await state.store.worker_register(
            state.id, socket.gethostname(), os.getpid(), state.options.queues,
            state.options.concurrency,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every ``heartbeat_interval`` (jittered), or at once when asked to verify the
        claims, until ``stop`` is set."""
        state = self._state
        while not stop.is_set():
            interval = state.options.heartbeat_interval * (0.8 + random.random() * 0.4)
            await first_of(stop.wait(), asyncio.sleep(interval), state.verify_claims.wait())
            state.verify_claims.clear()
            if stop.is_set():
                return
            try:
                sent_at = time.monotonic()
                await self._stop_lost_attempts()
                if not await state.store.worker_heartbeat(state.id, self._health()):
                    log.warning("worker %s was presumed dead; registering again", state.id)
                    state.presumed_dead += 1
                    sent_at = time.monotonic()
                    await self.register()
                    # Recovery took back what this worker held then, including claims that
                    # reached the buffer after the check above.
                    await self._stop_lost_attempts()
                state.alive_at = sent_at
                state.start_buffered()
                state.slot_freed.set()
                await self.release_orphans()
            except DatabaseUnavailable as exc:
                state.on_error(exc)

    async def _stop_lost_attempts(self) -> None:
        """Stop attempts, running or claimed and waiting in the buffer, whose job was cancelled
        or recovered while a NOTIFY was missed or while this worker was frozen or cut off."""
        state = self._state
        attempts = [*state.running, *state.unstarted()]
        if not attempts:
            return
        held = await state.store.job_held(state.id, attempts)
        for job_id, attempt in attempts:
            if job_id not in held:
                self._cancel(job_id, attempt)

    async def release_orphans(self) -> None:
        """Hand back, unstarted, the jobs the database says this worker holds but it knows
        nothing of: a fetch that committed but whose answer was lost (the connection dropped
        on the way back) claimed them. Left alone, they would wait for their ``expire_in``.

        Only while no claim is under way (its rows would look orphaned until they reach the
        buffer), and only if none began while the database was asked."""
        state = self._state
        if state.claims_under_way:
            return
        begun = state.claims_begun
        known = [*state.running, *state.unstarted(), *state.completer.unwritten()]
        orphaned = await state.store.job_orphaned(state.id, known)
        if not orphaned or state.claims_begun != begun:
            return
        log.warning(
            "worker %s holds %d job(s) it never received (a claim whose answer was lost); "
            "handing them back", state.id, len(orphaned),
        )  # fmt: skip
        for job_id, attempt in orphaned:
            state.completer.add(Ack(job_id, attempt, "release"))

"""The worker's producer: it claims jobs into the local buffer, as many as there is room for.

A fetch never claims more than free slots plus the adaptive prefetch. When a fetch comes back
full, more jobs are probably waiting, so the next one goes as soon as enough slots free up;
otherwise the producer sleeps until a NOTIFY for one of its queues, the next job's due time, or
the jittered poll interval. Beside it, a send heard for a fair queue while it is busy makes a
small express fetch of that queue (see :meth:`Producer.heard`); a queue paused meanwhile has
its claims handed back unstarted.

Sends notify a queue only while a worker holds its idle mark (see "Waking the workers" in
sql/queries/job.sql): the producer takes the marks of its queues when a fetch comes back short,
and gives them up once its fetches have come back full for ``UNMARK_AFTER``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any

from conveyor._store import rows
from conveyor._store.listen import Listener
from conveyor._store.worker_store import Ack
from conveyor.errors import DatabaseUnavailable
from conveyor.worker.state import WorkerState
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.worker")

# At most one look-up of the next due time per this many seconds. Under a steady load nearly
# every fetch comes back short (the worker keeps up), and asking after each one doubled the
# worker's statements; a look-up skipped is made this much later, by a timer.
NEXT_DUE_SPACING = 0.025
# A send to a fair queue heard while the producer is busy (a fetch under way, or waiting for
# room) claims at most this many jobs of that queue at once, beside it (an express fetch; see
# Producer.heard): at full drain the producer's next fetch may be tens of ms away, and the turn
# of the key just sent should not wait for it.
EXPRESS_LIMIT = 10
# A producer gives up its idle marks (sends to its queues stop notifying) once its fetches have
# come back full for this long: a backlog, not the odd full batch of a worker that keeps up,
# which would take them again at its next short fetch (two statements on the LISTEN connection).
UNMARK_AFTER = 0.05
# Sends that took the lock shared and did not notify have not committed yet: the producer looks
# again this much later (they commit within a round trip or two), twice as late each time they
# still have not, up to SENDING_RETRY_MAX (a send held up by a lock must not make it spin).
SENDING_RETRY = 0.001
SENDING_RETRY_MAX = 0.05


def admit_claimed(buffer: collections.deque[tuple[Any, ...]], claimed: list[Any]) -> None:
    """Add claimed rows to the local buffer, in claim order, except that the first row of each
    fair key (queue and ``fair_key``) the buffer holds no job of goes to its front: the claim
    gave that key its turn, and behind the buffer it would wait for the jobs another key's
    earlier fetches put there (up to ``PREFETCH_WINDOW`` of work)."""
    if not buffer or all(row[rows.FETCHED_META] is None for row in claimed):
        buffer.extend(claimed)
        return
    held = {(row[rows.FETCHED_QUEUE], _fair_key(row)) for row in buffer}
    first: list[Any] = []
    for row in claimed:
        key = (row[rows.FETCHED_QUEUE], _fair_key(row))
        if key[1] is not None and key not in held:
            held.add(key)
            first.append(row)
        else:
            buffer.append(row)
    buffer.extendleft(reversed(first))


def _fair_key(row: tuple[Any, ...]) -> str | None:
    meta = row[rows.FETCHED_META]  # a fair queue's claim carries the key there (0015)
    return None if meta is None else meta.get("fair_key")


class Producer:
    """Claims jobs for the slots until the worker stops (or, in burst mode, none is due)."""

    def __init__(self, state: WorkerState, essential_up: asyncio.Event) -> None:
        self._state = state
        # Set while the completer and the heartbeat run: outcomes of jobs claimed without them
        # could not be written, nor the claims kept alive. (The supervisor's flag: never cleared
        # here.)
        self._essential_up = essential_up
        self._loop = asyncio.get_running_loop()
        self._paused_at: dict[str, float] = {}  # queue: when its pause was heard
        # The fair queues among this worker's (read at start, learnt from claims since), whether
        # the producer waits for a wake-up (a NOTIFY makes it fetch at once), and the express
        # fetch beside it when it does not (see heard).
        self._fair_queues: set[str] = set()
        self._idle = False
        self._express_task: asyncio.Task[None] | None = None
        self._express_again: set[str] = set()
        self._express_asked_at: float | None = None  # when the one under way was sent
        self._keeping_open: asyncio.Task[None] | None = None
        # A rate-limited queue gains a token every interval / limit seconds and no NOTIFY says
        # so: the producer looks again that often (the tightest of its queues), not at the poll.
        self._token_interval = float("inf")
        # Set when the next job of these queues falls due, after a fetch found nothing to do.
        self._due_timer: asyncio.TimerHandle | None = None
        # When the next due time was last looked up (monotonic), and the timer of a look-up
        # put off (see NEXT_DUE_SPACING).
        self._due_asked_at = -NEXT_DUE_SPACING
        self._due_recheck: asyncio.TimerHandle | None = None
        # The LISTEN connection, which holds the idle marks (None: nobody notifies this worker,
        # which polls); the queues marked on its connection numbered marks_of; those whose mark
        # another worker held when last asked, and when (asked again once its holder says it
        # gave it up, or a poll interval later: a worker that dies gives its marks up
        # silently); and since when fetches have come back full.
        self.listener: Listener | None = None
        self._marked: set[str] = set()
        self._marks_of = 0
        self._taken: dict[str, float] = {}
        self._full_since: float | None = None
        self._sending_seen = 0  # marks found held by sends, one time after another

    async def prepare(self) -> None:
        """Read the served queues' rate limits and fairness before the first fetch."""
        state = self._state
        served = set(state.options.queues)
        for queue in await state.store.queue_list():
            if queue.name in served and queue.rate_limit and queue.rate_interval:
                every = max(0.01, queue.rate_interval / queue.rate_limit)
                self._token_interval = min(self._token_interval, every)
            if queue.name in served and queue.fair:
                self._fair_queues.add(queue.name)
        if self._fair_queues:
            await self._keep_express_connection()

    async def run(self) -> None:
        """Fetch until the worker stops; then wait for an express fetch under way, whose claims
        join the buffer that the worker hands back."""
        await self._produce()
        if self._express_task is not None:
            await asyncio.wait([self._express_task])

    def close(self) -> None:
        """Cancel the timers and an express fetch still under way (if the producer failed)."""
        if self._express_task is not None:
            self._express_task.cancel()
        for timer in (self._due_timer, self._due_recheck):
            if timer is not None:
                timer.cancel()

    async def _produce(self) -> None:
        state = self._state
        opts = state.options
        failures = 0
        while not state.stop.is_set():
            if not self._essential_up.is_set():
                await first_of(state.stop.wait(), self._essential_up.wait())
                continue
            if not state.fetch_wanted():
                state.awaiting_room = True
                try:
                    await self._wait(state.slot_freed)
                finally:
                    state.awaiting_room = False
                continue
            room = state.room()
            try:
                jobs = await self._claim(room)
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                state.on_error(exc)
                await self._wait(None, min(10.0, 0.1 * 2**failures))
                continue
            if len(jobs) == room:
                # A full batch: more may be waiting. Refill once half the room is free again:
                # fetches stay batched instead of one per finished job, and each goes while
                # half a batch is still to run.
                state.refill_at = max(1, state.capacity() // 2)
                await self._unmark_when_saturated()
                continue
            state.refill_at = 1
            self._full_since = None
            if opts.burst:
                # Claims in the buffer count too: they wait there while the heartbeat is not
                # recent, and a drain that ended now would hand them back unrun.
                if jobs or state.running or state.buffer:
                    await self._wait(state.slot_freed)
                    continue
                # Nothing due and nothing running: write pending outcomes (a retry due now exists
                # only once acknowledged), then look once more before calling it done.
                await state.completer.drain()
                with state.claiming():
                    again = await state.store.job_fetch(opts.queues, state.id, room, state.clock())
                    admit_claimed(state.buffer, again)
                if not again:
                    return
                state.start_buffered()
                continue
            # A short fetch: sends are to notify this worker from now on. Those that did not
            # and committed since that fetch, the look-up of the next due time finds.
            if await self._mark_idle():
                self._sending_seen += 1
                retry = SENDING_RETRY * 2 ** min(self._sending_seen - 1, 10)
                await self._wait(None, min(SENDING_RETRY_MAX, retry))
                continue
            self._sending_seen = 0
            # Whatever falls due next is announced by no NOTIFY.
            await self._wake_when_due()
            poll = min(opts.poll_interval, self._token_interval) * (0.75 + random.random() / 2)
            self._idle = True
            try:
                await self._wait(state.wake, poll)
            finally:
                self._idle = False

    async def _claim(self, room: int) -> list[tuple[Any, ...]]:
        """Claim up to ``room`` jobs into the buffer (with the pending outcomes, see
        Completer.fetch); the rows claimed."""
        state = self._state
        with state.claiming():
            presumed_dead = state.presumed_dead
            asked_at = time.monotonic()
            jobs = await state.completer.fetch(state.options.queues, room)
            if jobs and presumed_dead != state.presumed_dead:
                jobs = await self._still_held(jobs)
            if self._paused_at:
                jobs = self._unpaused(jobs, asked_at)
            self._learn_fair(jobs)
            admit_claimed(state.buffer, jobs)
        state.start_buffered()
        return jobs

    async def _wait(self, event: asyncio.Event | None, timeout: float | None = None) -> None:
        waits: list[Any] = [self._state.stop.wait()]
        if event is not None:
            waits.append(event.wait())
        if timeout is not None:
            waits.append(asyncio.sleep(timeout))
        await first_of(*waits)
        if event is not None:
            event.clear()

    async def _still_held(self, claimed: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The claims among ``claimed`` that recovery has not taken back."""
        state = self._state
        attempts = [(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT]) for row in claimed]
        held = await state.store.job_held(state.id, attempts)
        return [row for row in claimed if row[rows.FETCHED_ID] in held]

    def _learn_fair(self, claimed: list[tuple[Any, ...]]) -> None:
        """Note the fair queues among the claimed rows' (a fair claim carries the key in meta),
        made fair since the worker started. One made unfair since stays noted: all that costs
        is an express fetch now and then that a plain fetch would have made anyway."""
        fair = self._fair_queues
        for row in claimed:
            meta = row[rows.FETCHED_META]
            if meta is not None and "fair_key" in meta and row[rows.FETCHED_QUEUE] not in fair:
                if not fair:  # the first: a connection for its express fetches
                    self._keeping_open = self._loop.create_task(self._keep_express_connection())
                fair.add(row[rows.FETCHED_QUEUE])

    async def _keep_express_connection(self) -> None:
        """Keep a connection open for the express fetch beside the producer's (a new one takes
        tens of ms, which the first express fetch would wait for)."""
        try:
            await self._state.store.keep_open(2)
        except Exception as exc:  # an optimisation: the express fetch opens one if need be
            log.debug("could not keep a connection open for express fetches: %s", exc)

    # -- what the worker hears -------------------------------------------------------------

    def heard(self, queue: str) -> None:
        """A job was sent to ``queue``: fetch now. For a fair queue heard while the producer is
        busy (a fetch under way, or waiting for room to fetch), also claim a few of that
        queue's jobs now, beside it: an express fetch.

        At full drain speed a fetch of a few hundred jobs (and the acks riding with it) takes
        tens of ms, and a job sent just after one began waits for it and for the whole next one;
        the express fetch, a small claim on the worker's spare connection, gives the key just
        sent its turn in the few ms a small claim takes, and admit_claimed puts its job ahead of
        the buffer. The claim is the queue's own (claim_fair: every key in turn, after the last
        one served), so it serves the new job's key when the queue has at most as many keys with
        due jobs as it claims jobs, and otherwise the next keys in turn, as any fetch would.

        Only while a job it claims could start soon: a slot is free, or jobs are quick enough
        that the worker claims ahead (adaptive prefetch). A worker whose slots are all taken by
        long jobs claims nothing more; the producer's next fetch, when a slot frees, serves the
        turn, and meanwhile the jobs stay with workers that have room. At most one runs at a
        time; a send heard meanwhile makes it go once more."""
        self._state.wake.set()
        if self._idle or queue not in self._fair_queues or self._state.stop.is_set():
            return
        if self._express_task is not None and not self._express_task.done():
            self._express_again.add(queue)
            return
        self._express_task = asyncio.create_task(self._express_fetch(queue))

    async def _express_fetch(self, queue: str) -> None:
        state = self._state
        while True:
            free = state.slots() - len(state.running)
            ahead = state.capacity() - state.slots()  # the prefetch the worker allows itself
            if free <= 0 and ahead <= 0:
                return
            # Two at least: with two keys, one claim of one job would serve the first key only.
            limit = max(2, min(EXPRESS_LIMIT, max(free, 0) + ahead))
            with state.claiming():
                presumed_dead = state.presumed_dead
                asked_at = self._express_asked_at = time.monotonic()
                try:
                    jobs = await state.store.job_fetch([queue], state.id, limit, state.clock())
                    if jobs and presumed_dead != state.presumed_dead:
                        jobs = await self._still_held(jobs)
                except DatabaseUnavailable as exc:  # the producer's fetches find the job instead
                    log.debug("express fetch of queue %s failed: %s", queue, exc)
                    return
                finally:
                    self._express_asked_at = None
                # Paused since it was sent: handed back. (Not through _unpaused, which forgets
                # the pauses older than this fetch that the producer's fetch, if sent earlier,
                # must see.)
                paused = {q for q, at in self._paused_at.items() if at >= asked_at}
                if paused:
                    self.release([row for row in jobs if row[rows.FETCHED_QUEUE] in paused])
                    jobs = [row for row in jobs if row[rows.FETCHED_QUEUE] not in paused]
                admit_claimed(state.buffer, jobs)
            state.start_buffered()
            if not self._express_again or self._idle or state.stop.is_set():
                self._express_again.clear()
                return
            queue = self._express_again.pop()

    def unmarked(self, queue: str) -> None:
        """A worker gave the idle mark of ``queue`` up: ask for it when next idle. (A send heard
        says nothing of the mark: asking then would cost every idle worker a statement a send.)"""
        if self._taken.pop(queue, None) is not None:
            self._state.wake.set()

    async def _mark_idle(self) -> bool:
        """Take the idle marks of this worker's queues it does not hold (nor found taken lately,
        see ``_taken``). True when a send that did not notify is still committing, so that a
        mark could not be taken yet: fetch again in a moment."""
        listener = self.listener
        if listener is None or not listener.connected.is_set():
            return False
        if listener.generation != self._marks_of:  # a new connection: the marks went with it
            self._marked.clear()
            self._taken.clear()
            self._marks_of = listener.generation
        now = time.monotonic()
        expired = now - self._state.options.poll_interval
        self._taken = {q: at for q, at in self._taken.items() if at > expired}
        held = self._marked | self._taken.keys()
        wanted = [q for q in self._state.options.queues if q not in held]
        if not wanted:
            return False
        try:
            marks = await self._state.store.mark_idle(listener, wanted)
        except DatabaseUnavailable as exc:  # the LISTEN connection is down: the poll stands in
            log.debug("could not take the idle marks: %s", exc)
            return False
        self._marked.update(q for q, mark in marks.items() if mark == "marked")
        self._taken.update((q, now) for q, mark in marks.items() if mark == "taken")
        return "sending" in marks.values()

    async def _unmark_when_saturated(self) -> None:
        """Give up the idle marks once fetches have come back full for ``UNMARK_AFTER``: sends
        to a backlog need not wake anyone, and their commits no longer queue behind one
        another for the NOTIFY lock."""
        listener = self.listener
        if not self._marked or listener is None:
            return
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        if now - self._full_since < UNMARK_AFTER:
            return
        marked, self._marked = self._marked, set()
        if listener.generation != self._marks_of:
            return
        try:
            await self._state.store.unmark_idle(listener, sorted(marked))
        except DatabaseUnavailable as exc:  # the marks went with the connection
            log.debug("could not give up the idle marks: %s", exc)

    async def _wake_when_due(self) -> None:
        """Wake up when the next job of these queues falls due; the poll stays the fallback.

        Asked at most once per NEXT_DUE_SPACING: a short fetch sooner than that arms a timer
        instead, which wakes the producer to fetch and ask then."""
        state = self._state
        wait = self._due_asked_at + NEXT_DUE_SPACING - time.monotonic()
        if wait > 0:
            if self._due_recheck is None:
                self._due_recheck = self._loop.call_later(wait, state.wake.set)
            return
        if self._due_recheck is not None:
            self._due_recheck.cancel()
            self._due_recheck = None
        self._due_asked_at = time.monotonic()
        try:
            seconds = await state.store.job_next_due(state.options.queues, state.clock())
        except Exception as exc:  # an optimisation: whatever fails, the poll still finds jobs
            state.on_error(exc)
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
        self._due_timer = None
        if seconds is not None:
            self._due_timer = self._loop.call_later(seconds, state.wake.set)

    def paused(self, queue: str) -> None:
        """A queue was paused: its claims waiting in the buffer go back to it unstarted (the
        attempt given back), and so do those of a fetch already under way, which may have
        claimed them before the pause committed."""
        buffer = self._state.buffer
        if queue not in self._state.options.queues:
            return
        self._paused_at[queue] = time.monotonic()
        if any(row[rows.FETCHED_QUEUE] == queue for row in buffer):
            kept = [row for row in buffer if row[rows.FETCHED_QUEUE] != queue]
            self.release([row for row in buffer if row[rows.FETCHED_QUEUE] == queue])
            buffer.clear()
            buffer.extend(kept)

    def _unpaused(self, claimed: list[Any], asked_at: float) -> list[Any]:
        """The rows of a fetch sent at ``asked_at`` but those of queues paused since. The
        pauses heard before it, and before the express fetch under way if any, are forgotten:
        no fetch still to return was sent before them."""
        paused = {queue for queue, at in self._paused_at.items() if at >= asked_at}
        if self._express_asked_at is not None:
            asked_at = min(asked_at, self._express_asked_at)
        self._paused_at = {q: at for q, at in self._paused_at.items() if at >= asked_at}
        if not paused:
            return claimed
        self.release([row for row in claimed if row[rows.FETCHED_QUEUE] in paused])
        return [row for row in claimed if row[rows.FETCHED_QUEUE] not in paused]

    def release(self, claimed: list[Any]) -> None:
        """Hand claims back unstarted: the attempt is not spent."""
        for row in claimed:
            self._state.completer.add(
                Ack(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT], "release")
            )

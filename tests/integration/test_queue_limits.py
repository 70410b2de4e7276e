"""Queue limits enforced by the database across workers: concurrency, singleton, rate limit."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg

from conveyor import Conveyor, Job, JobState


async def workers(app: Conveyor, count: int) -> AsyncIterator[None]:
    """``count`` workers of concurrency 10 in this loop, as if on separate hosts."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(app.run_worker_async(stop=stop, concurrency=10, poll_interval=0.05))
        for _ in range(count)
    ]
    yield
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def all_done(app: Conveyor, queue: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await app.queue_stats_async(queue)).counts[JobState.COMPLETED] == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue}: not all {n} jobs completed in {timeout}s")


class Overlap:
    """Counts how many handlers run at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def run(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def test_a_concurrency_limit_holds_across_three_workers(app_async: Conveyor) -> None:
    await app_async.create_queue_async("limited", concurrency=2)
    overlap = Overlap()
    free = Overlap()

    @app_async.job("limited")
    async def limited(job: Job) -> None:
        await overlap.run(0.05)

    @app_async.job("free")
    async def unlimited(job: Job) -> None:
        await free.run(0.05)

    await app_async.send_batch_async([("limited", {"n": n}) for n in range(30)])
    await app_async.send_batch_async([("free", {"n": n}) for n in range(30)])
    async for _ in workers(app_async, 3):
        await all_done(app_async, "limited", 30)
        await all_done(app_async, "free", 30)
    assert overlap.peak == 2  # reached, never exceeded
    assert free.peak > 2  # the limit is per queue


async def test_a_singleton_queue_runs_one_job_at_a_time(app_async: Conveyor) -> None:
    await app_async.create_queue_async("one", policy="singleton")
    overlap = Overlap()

    @app_async.job("one")
    async def one(job: Job) -> None:
        await overlap.run(0.02)

    await app_async.send_batch_async([("one", {"n": n}) for n in range(15)])
    async for _ in workers(app_async, 3):
        await all_done(app_async, "one", 15)
    assert overlap.peak == 1


async def test_a_rate_limit_of_five_a_second_holds_over_ten_seconds(app_async: Conveyor) -> None:
    await app_async.create_queue_async("paced", rate_limit=(5, 1))

    @app_async.job("paced")
    async def paced(job: Job) -> None:
        pass

    ids = await app_async.send_batch_async([("paced", {"n": n}) for n in range(55)])
    stop = asyncio.Event()
    tasks = [  # the default 2 s poll: the workers must come back when tokens refill, not poll
        asyncio.create_task(app_async.run_worker_async(stop=stop, concurrency=10)) for _ in range(3)
    ]
    try:
        await all_done(app_async, "paced", 55, timeout=40)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    # The limiter paces claims: their times are the database's, not a busy event loop's.
    claimed = [(await app_async.get_job_async(i)).started_at for i in ids]
    starts = sorted(c.timestamp() for c in claimed if c is not None)
    assert len(starts) == 55
    # A full bucket of 5 at once, then 5 a second: 55 jobs take 10 s, and not much more.
    assert 9.5 <= starts[-1] - starts[0] <= 12.5
    # Replay the bucket over the claims as the database stamped them (one claim, one now()): no
    # claim took more than the bucket held. A stalled worker lets tokens pile up, up to 5, which a
    # fixed window of one second would count as a burst; the bucket allows it, so does the replay.
    # A claim whose statement began before another's but took the queue's lock after it is
    # stamped earlier than the tokens it spent were counted: a token and a half of slack.
    tokens, last = 5.0, starts[0]
    for at, taken in sorted(collections.Counter(starts).items()):
        tokens = min(5.0, tokens + (at - last) * 5) - taken
        last = at
        assert tokens >= -1.5, f"{taken} claimed at {at - starts[0]:.3f} s, beyond the bucket"


async def test_a_claim_that_reaches_the_bucket_late_refills_it_from_the_latest_claim(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """A claim's time is when its statement began; one that began first may take the queue's
    lock last. Its time must not move the bucket's last refill back, or the next claim is given
    the tokens of that interval a second time."""
    await app_async.create_queue_async("paced", rate_limit=(5, 1))
    await app_async.send_batch_async([("paced", {"n": n}) for n in range(20)])
    worker = uuid.uuid4()
    s = app_async.schema
    t0 = datetime.now(UTC) + timedelta(hours=1)
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {s}.worker (id, hostname, pid, queues, concurrency, metadata) "
            "VALUES (%s, 'test', 1, %s, 1, '{}')",
            (worker, ["paced"]),
        )

        def claimed(after: float) -> int:
            rows = conn.execute(
                f"SELECT id FROM {s}.fetch_jobs(%s, %s, 10, %s) WHERE id IS NOT NULL",
                (["paced"], worker, t0 + timedelta(seconds=after)),
            )
            return len(rows.fetchall())

        assert claimed(0) == 5  # the full bucket
        assert claimed(1.0) == 5  # refilled over one second
        assert claimed(0.5) == 0  # began before the last claim, reached the lock after it
        assert claimed(1.2) == 1  # 0.2 s since the refill at 1.0: one token, not 3.5


async def test_a_short_queue_keeps_at_most_one_job_waiting(app_async: Conveyor) -> None:
    await app_async.create_queue_async("short", policy="short")
    first = await app_async.send_async("short", {"n": 1})
    assert await app_async.send_async("short", {"n": 2}) == first
    assert await app_async.send_batch_async([("short", {"n": 3}), ("short", {"n": 4})]) == [
        first,
        first,
    ]
    assert [j.data for j in await app_async.list_jobs_async(queue="short")] == [{"n": 1}]
    ran: list[int] = []

    @app_async.job("short")
    async def short(job: Job) -> None:
        ran.append(job.data["n"])

    await app_async.drain_async()
    second = await app_async.send_async("short", {"n": 5})  # nothing waits now: accepted
    assert second != first
    await app_async.drain_async()
    assert ran == [1, 5]


async def test_a_stately_queue_has_one_waiting_and_one_running(app_async: Conveyor) -> None:
    await app_async.create_queue_async("stately", policy="stately")
    gate = asyncio.Event()
    started = asyncio.Event()
    overlap = Overlap()

    @app_async.job("stately")
    async def stately(job: Job) -> None:
        started.set()
        overlap.now += 1
        overlap.peak = max(overlap.peak, overlap.now)
        await gate.wait()
        overlap.now -= 1

    running = await app_async.send_async("stately", {"n": 1})
    async for _ in workers(app_async, 2):
        await asyncio.wait_for(started.wait(), 10)
        waiting = await app_async.send_async("stately", {"n": 2})
        assert waiting != running
        assert await app_async.send_async("stately", {"n": 3}) == waiting
        await asyncio.sleep(0.3)
        assert overlap.peak == 1
        gate.set()
        await all_done(app_async, "stately", 2)
    assert overlap.peak == 1


async def test_a_failing_job_of_a_short_queue_retries_beside_the_waiting_one(
    app_async: Conveyor,
) -> None:
    await app_async.create_queue_async("short", policy="short")
    attempts: list[int] = []

    @app_async.job("short", retry_limit=1, retry_delay=0)
    async def flaky(job: Job) -> None:
        attempts.append(job.data["n"])
        if job.attempt == 1 and job.data["n"] == 1:
            await app_async.send_async("short", {"n": 2})  # waits while n=1 is running
            raise RuntimeError("first attempt fails")

    await app_async.send_async("short", {"n": 1})
    await app_async.drain_async()
    assert sorted(attempts) == [1, 1, 2]
    assert all(j.state is JobState.COMPLETED for j in await app_async.list_jobs_async())


async def test_jobs_of_a_group_run_one_at_a_time_in_order(app_async: Conveyor) -> None:
    runs: list[tuple[str, int, float, float]] = []

    @app_async.job("grouped")
    async def grouped(job: Job) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.02)
        runs.append((job.group_key or "", job.data["n"], start, time.monotonic()))

    jobs = [("grouped", {"n": n}, {"group_key": g}) for n in range(8) for g in ("a", "b", "c")]
    await app_async.send_batch_async(jobs)
    async for _ in workers(app_async, 3):
        await all_done(app_async, "grouped", len(jobs))
    for group in ("a", "b", "c"):
        mine = sorted((r for r in runs if r[0] == group), key=lambda r: r[2])
        assert [r[1] for r in mine] == list(range(8))  # in the order sent
        assert all(b[2] >= a[3] for a, b in itertools.pairwise(mine))  # never overlapping
    spans = {g: (min(r[2] for r in runs if r[0] == g), max(r[3] for r in runs if r[0] == g))
             for g in ("a", "b", "c")}  # fmt: skip
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]  # groups in parallel


async def test_a_retrying_job_holds_its_group(app_async: Conveyor) -> None:
    order: list[tuple[int, int]] = []

    @app_async.job("held", retry_limit=1, retry_delay=0.3, retry_backoff="fixed")
    async def held(job: Job) -> None:
        order.append((job.data["n"], job.attempt))
        if job.data["n"] == 1 and job.attempt == 1:
            raise RuntimeError("first attempt fails")

    await app_async.send_batch_async(
        [("held", {"n": n}, {"group_key": "g"}) for n in (1, 2)] + [("held", {"n": 3})]
    )
    async for _ in workers(app_async, 2):
        await all_done(app_async, "held", 3)
    grouped = [entry for entry in order if entry[0] != 3]
    assert grouped == [(1, 1), (1, 2), (2, 1)]  # job 2 waited for job 1's retry
    assert (3, 1) in order  # the ungrouped job did not wait

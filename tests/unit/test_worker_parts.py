"""The worker's building blocks that need no database: the supervisor of its services, the pool
of handler threads, and the validation of what handlers ask for (delays, results)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import io
import json
import logging
import math
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import Job, Retry
from conveyor._store import rows
from conveyor.app import heartbeat_for
from conveyor.errors import InvalidOption, InvalidRetryDelay
from conveyor.handlers import Registry
from conveyor.options import TEN_YEARS
from conveyor.worker import outcome
from conveyor.worker.logs import configure_logging
from conveyor.worker.producer import admit_claimed
from conveyor.worker.supervisor import Supervisor
from conveyor.worker.threads import DaemonThreadPool, LoopHandoff

# -- supervisor ------------------------------------------------------------------------------


async def test_a_crashed_service_is_restarted_and_reported_while_down() -> None:
    errors: list[tuple[str, str]] = []
    runs = 0
    second_run = asyncio.Event()
    release = asyncio.Event()

    async def flaky(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await release.wait()
            raise RuntimeError("bad row")
        second_run.set()
        await stop.wait()

    supervisor = Supervisor(lambda name, exc: errors.append((name, str(exc))), min_backoff=0.2)
    supervisor.start("completer", flaky, essential=True)
    assert supervisor.essential_up.is_set()
    release.set()
    for _ in range(100):
        if supervisor.down():
            break
        await asyncio.sleep(0.005)
    # While it waits for its restart, the worker must not fetch.
    assert supervisor.down() == ["completer"]
    assert not supervisor.essential_up.is_set()
    assert supervisor.states["completer"].last_error == "RuntimeError: bad row"
    await asyncio.wait_for(second_run.wait(), 5)
    assert supervisor.down() == []
    assert supervisor.essential_up.is_set()
    assert supervisor.states["completer"].restarts == 1
    assert errors == [("completer", "bad row")]
    await supervisor.stop()


async def test_a_service_that_returns_early_is_restarted_and_stop_ends_every_service() -> None:
    runs = 0

    async def quits(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1

    async def stubborn(stop: asyncio.Event) -> None:
        await asyncio.sleep(3600)  # ignores stop: cancelled after the timeout

    supervisor = Supervisor(lambda name, exc: None, min_backoff=0.01, max_backoff=0.02)
    supervisor.start("quits", quits)
    supervisor.start("stubborn", stubborn)
    for _ in range(200):
        if runs >= 3:
            break
        await asyncio.sleep(0.01)
    assert runs >= 3
    await asyncio.wait_for(supervisor.stop(timeout=0.2), 5)


# -- thread pool -----------------------------------------------------------------------------


def test_an_abandoned_thread_is_replaced_and_counted_until_its_call_returns() -> None:
    pool = DaemonThreadPool(1, "conveyor-test")
    release = threading.Event()
    stuck = pool.submit(release.wait, 10)
    while not stuck.running():
        pass
    pool.abandon(stuck)
    assert pool.stuck == 1
    assert pool.over_stuck_limit == 0
    # The next call gets a fresh thread instead of waiting behind the stuck one.
    assert pool.submit(lambda: "next").result(timeout=5) == "next"
    release.set()
    assert stuck.result(timeout=5) is True
    for _ in range(100):
        if pool.stuck == 0:
            break
        threading.Event().wait(0.01)
    assert pool.stuck == 0
    pool.shutdown()


async def test_calls_that_end_together_wake_the_loop_once_with_each_outcome() -> None:
    loop = asyncio.get_running_loop()
    wakes = 0
    real = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakes
        wakes += 1
        return real(*args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    pool = DaemonThreadPool(4, "conveyor-test")
    handoff = LoopHandoff(loop)
    try:
        gate = threading.Event()

        def answer(n: int) -> int:
            gate.wait(5)
            if n == 3:
                raise ValueError("three")
            return n

        calls = [pool.submit(answer, n) for n in range(4)]
        waiters = [handoff.watch(call) for call in calls]
        # The loop is busy (this coroutine does not yield) while all four calls end.
        gate.set()
        concurrent.futures.wait(calls, timeout=5)
        deadline = time.monotonic() + 5
        while wakes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # a call's done callbacks run just after its result is set
        assert wakes == 1
        assert [await w for w in waiters[:3]] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            await waiters[3]
        # Cancelling the loop's future leaves the call running, as shield did.
        release = threading.Event()
        slow = pool.submit(release.wait, 5)
        waiter = handoff.watch(slow)
        waiter.cancel()
        await asyncio.sleep(0)
        assert not slow.cancelled()
        release.set()
        assert slow.result(timeout=5) is True
        await asyncio.sleep(0.05)  # its end is handed to a cancelled future: nothing breaks
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        pool.shutdown()


def test_past_max_stuck_no_more_threads_start_and_the_worker_is_told_to_hold_slots() -> None:
    pool = DaemonThreadPool(1, "conveyor-test", max_stuck=1)
    release = threading.Event()
    calls = [pool.submit(release.wait, 10)]
    while not calls[0].running():
        pass
    pool.abandon(calls[0])
    calls.append(pool.submit(release.wait, 10))
    while not calls[1].running():
        pass
    pool.abandon(calls[1])
    assert (pool.stuck, pool.over_stuck_limit) == (2, 1)
    waiting = pool.submit(lambda: "ran")
    assert not waiting.running()  # no third thread: the worker holds a slot instead
    assert waiting.cancel()  # so a call given up on while it waits never runs
    release.set()
    for call in calls:
        call.result(timeout=5)
    pool.shutdown()


def test_a_call_cancelled_while_waiting_for_a_thread_never_runs() -> None:
    pool = DaemonThreadPool(1, "conveyor-test", max_stuck=0)
    release = threading.Event()
    ran: list[str] = []
    busy = pool.submit(release.wait, 10)
    waiting = pool.submit(ran.append, "waiting")
    assert waiting.cancel()
    release.set()
    busy.result(timeout=5)
    assert pool.submit(lambda: "after").result(timeout=5) == "after"
    assert ran == []
    pool.shutdown()


# -- what handlers ask for -------------------------------------------------------------------


def _job(**fields: object) -> Job:
    base: dict[str, object] = {
        "id": uuid.uuid4(), "queue": "q", "state": "active", "data": {}, "priority": 0,
        "attempt": 1, "retry_limit": 3, "retry_delay": 1.0, "retry_backoff": "fixed",
        "retry_delay_max": None, "expire_in": 60.0, "retention": 60.0,
        "run_at": datetime.now(UTC), "created_at": datetime.now(UTC),
    }  # fmt: skip
    base.update(fields)
    return Job(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("after", [1e13, math.inf, -math.inf, math.nan, "soon", object()])
def test_a_retry_after_the_database_cannot_store_is_refused_with_a_typed_error(
    after: object,
) -> None:
    with pytest.raises(InvalidRetryDelay, match="Retry"):
        outcome.snoozed(_job(), Retry(after=after), None)  # type: ignore[arg-type]


def test_a_retry_within_ten_years_is_kept_and_a_past_one_means_now() -> None:
    now = datetime.now(UTC)
    assert outcome.snoozed(_job(), Retry(after=TEN_YEARS), now).delay == TEN_YEARS
    assert outcome.snoozed(_job(), Retry(after=-5), now).delay == 0
    assert outcome.snoozed(_job(), Retry(after=now - timedelta(hours=1)), now).delay == 0
    later = outcome.snoozed(_job(), Retry(after=timedelta(minutes=2)), now).delay
    assert later == 120


@pytest.mark.parametrize("returned", [math.inf, math.nan, 1e13, -1.0, "x"])
def test_a_retry_policy_returning_a_bad_delay_retries_at_the_cap_and_says_so(
    returned: object,
) -> None:
    registry = Registry()

    def handler(job: Job) -> None:
        raise ValueError("boom")

    registry.register("q", handler, retry_policy=lambda attempt, error: returned)  # type: ignore[arg-type,return-value]
    error: dict[str, object] = {"type": "ValueError", "message": "boom"}
    ack = outcome.failed(
        _job(retry_delay_max=600.0), registry.get("q"), ValueError("boom"), error, lambda: 0.5
    )
    assert (ack.outcome, ack.delay) == ("retry", 600.0)
    assert "retry_policy returned" in json.loads(ack.error or "{}")["retry_policy_error"]


def test_a_final_failure_is_not_retried_whatever_attempts_remain() -> None:
    ack = outcome.failed(_job(attempt=1, retry_limit=5), None, ValueError("x"), {}, lambda: 0.5)
    assert ack.outcome == "retry"
    ack = outcome.failed(
        _job(attempt=1, retry_limit=5), None, ValueError("x"), {}, lambda: 0.5, final=True
    )
    assert ack.outcome == "failed"


# -- heartbeat and stale_after ---------------------------------------------------------------


def test_the_heartbeat_follows_stale_after_and_one_that_leaves_no_margin_is_refused() -> None:
    assert heartbeat_for(30, None) == 5
    assert heartbeat_for(2, None) == pytest.approx(2 / 3)
    assert heartbeat_for(30, 10) == 10
    with pytest.raises(InvalidOption, match="at most half of stale_after"):
        heartbeat_for(2, 5)
    with pytest.raises(InvalidOption, match="at most half of stale_after"):
        heartbeat_for(10, 10)


# -- log lines -------------------------------------------------------------------------------


def test_a_log_stream_that_blocks_never_blocks_the_code_that_logs() -> None:
    """A full pipe or a paused terminal must delay the log, not the worker's event loop."""

    class Stuck(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def write(self, text: str) -> int:
            self.release.wait(1)
            return super().write(text)

    stream = Stuck()
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging("INFO", "logfmt", stream)
        begin = time.monotonic()
        for n in range(5):
            logging.getLogger("conveyor.job").warning("attempt %d failed", n)
        assert time.monotonic() - begin < 0.5  # queued, not written (each write blocks 1 s)
        assert stream.getvalue() == ""
        stream.release.set()
        for _ in range(200):
            if stream.getvalue().count("\n") == 5:
                break
            time.sleep(0.01)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 5
        assert "level=warning" in lines[0] and "attempt 0 failed" in lines[0]
    finally:
        stream.release.set()
        for handler in [h for h in root.handlers if h.get_name() == "conveyor"]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_the_worker_builds_a_claimed_job_equal_to_the_dataclass_constructor() -> None:
    """fetched_job fills Job's slots directly (faster than its frozen __init__): same Job."""
    from datetime import UTC, datetime

    from conveyor._store import rows
    from conveyor.models import Job, JobState

    now = datetime.now(UTC)
    claimed = uuid.uuid4()
    row = (claimed, "q", "active", {"i": 1}, 3, 2, 5, 1.5, "fixed", 60.0, 900.0, 3600.0, now,
           now, now, None, {"traceparent": "00-x"}, [{"m": 1}], None, "s", 10, "u", "dl", "g",
           None, uuid.uuid4())  # fmt: skip
    runtime = object()
    job = rows.fetched_job(row, runtime)  # type: ignore[arg-type]
    expected = Job(*row[:16], None, *row[17:24], [], row[25], runtime, {}, row[16])  # type: ignore[arg-type]
    assert job == expected and job.state is JobState.ACTIVE and job.depends_on == []
    assert job.meta == {"traceparent": "00-x"} and job.result is None
    assert job._runtime is runtime
    never_failed = rows.fetched_job((*row[:17], None, *row[18:]), runtime)  # type: ignore[arg-type]
    assert never_failed.errors == [] and never_failed.error is None


def _claimed(queue: str, key: str | None, n: int) -> tuple[Any, ...]:
    row: list[Any] = [None] * 26
    row[rows.FETCHED_ID], row[rows.FETCHED_QUEUE] = n, queue
    row[rows.FETCHED_META] = None if key is None else {"fair_key": key}
    return tuple(row)


def test_a_fair_keys_first_claimed_job_goes_ahead_of_the_buffer_when_it_holds_none_of_its_key() -> (
    None
):
    buffer = collections.deque([_claimed("q", "A", n) for n in range(3)])
    admit_claimed(buffer, [_claimed("q", "A", 3), _claimed("q", "B", 4), _claimed("q", "A", 5),
                           _claimed("q", "B", 6), _claimed("r", "A", 7)])  # fmt: skip
    assert [row[rows.FETCHED_ID] for row in buffer] == [4, 7, 0, 1, 2, 3, 5, 6]
    plain = collections.deque([_claimed("q", None, 0)])
    admit_claimed(plain, [_claimed("q", None, 1), _claimed("q", None, 2)])
    assert [row[rows.FETCHED_ID] for row in plain] == [0, 1, 2]  # unfair rows keep their order
    empty: collections.deque[tuple[Any, ...]] = collections.deque()
    admit_claimed(empty, [_claimed("q", "A", 0), _claimed("q", "B", 1)])
    assert [row[rows.FETCHED_ID] for row in empty] == [0, 1]

"""Races: many senders of one key, from many connections at once."""

from __future__ import annotations

import asyncio
import threading

from conveyor import Conveyor


async def test_fifty_concurrent_senders_of_one_unique_key(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    async with Conveyor(
        conveyor_dsn, schema=conveyor_schema, pool_min_size=10, pool_max_size=10
    ) as app:
        start = asyncio.Event()

        async def sender(n: int) -> object:
            await start.wait()
            return await app.send_async("race", {"n": n}, unique_key="the-key")

        tasks = [asyncio.create_task(sender(n)) for n in range(50)]
        await asyncio.sleep(0.05)
        start.set()
        ids = await asyncio.gather(*tasks)
        jobs = await app.list_jobs_async(queue="race")
    assert len(jobs) == 1
    assert set(ids) == {jobs[0].id}


def test_fifty_threads_racing_for_one_throttle_window(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    with Conveyor(conveyor_dsn, schema=conveyor_schema, pool_min_size=10, pool_max_size=10) as app:
        barrier = threading.Barrier(50)
        ids: list[object] = []

        def sender(n: int) -> None:
            barrier.wait()
            ids.append(app.send("race", {"n": n}, singleton_key="k", singleton_seconds=3600))

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        jobs = app.list_jobs(queue="race")
    assert len(ids) == 50
    assert len(jobs) == 1
    assert set(ids) == {jobs[0].id}


def test_replace_races_keep_one_job_with_one_of_the_payloads(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    with Conveyor(conveyor_dsn, schema=conveyor_schema, pool_min_size=10, pool_max_size=10) as app:
        barrier = threading.Barrier(20)

        def sender(n: int) -> None:
            barrier.wait()
            app.send("race", {"n": n}, unique_key="k", unique_mode="replace")

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        jobs = app.list_jobs(queue="race")
    assert len(jobs) == 1
    assert 0 <= jobs[0].data["n"] < 20

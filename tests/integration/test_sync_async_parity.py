"""The sync and async APIs read and write the same records."""

from __future__ import annotations

from conveyor import Conveyor


async def test_sync_and_async_see_the_same_jobs_and_queues(app: Conveyor) -> None:
    a = app.send("q", {"via": "sync"}, priority=2)
    b = await app.send_async("q", {"via": "async"}, unique_key="k")
    app.create_queue("q", retry_limit=4)
    assert app.get_job(b) == await app.get_job_async(b)
    assert await app.get_job_async(a) == app.get_job(a)
    assert app.list_jobs() == await app.list_jobs_async()
    assert app.get_queue("q") == await app.get_queue_async("q")
    assert app.queue_stats("q").counts == (await app.queue_stats_async("q")).counts
    assert app.send("q", {}, unique_key="k") == b
    await app.close_async()

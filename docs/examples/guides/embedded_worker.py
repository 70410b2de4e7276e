"""A worker inside your own asyncio program, stopped gracefully by an event."""

import asyncio
import os

from conveyor import Conveyor, Job


async def main() -> None:
    app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))

    @app.job("pings")
    async def ping(job: Job) -> str:
        return "pong"

    stop = asyncio.Event()
    async with app:
        worker = asyncio.create_task(app.run_worker_async(concurrency=5, stop=stop))
        job_id = await app.send_async("pings", {})
        done = await app.wait_for_async(job_id, timeout=10)  # woken by NOTIFY
        print(done.state, done.result)  # completed pong
        stop.set()  # like SIGTERM: no new jobs, in-flight ones finish (shutdown_timeout)
        ran = await worker
    assert done.result == "pong" and ran == 1


asyncio.run(main())

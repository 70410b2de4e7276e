import pytest

from conveyor import Conveyor, Job


@pytest.mark.asyncio
async def test_an_async_handler(app_async: Conveyor) -> None:
    @app_async.job("images.resize")
    async def resize(job: Job) -> dict[str, int]:
        return {"width": job.data["width"] // 2}

    job_id = await app_async.send_async("images.resize", {"width": 640})
    assert await app_async.drain_async() == 1
    assert (await app_async.get_job_async(job_id)).result == {"width": 320}

"""FastAPI with the worker in its lifespan: an endpoint sends a job, the in-process worker runs
it, the app and the mounted dashboard see it done, and shutdown stops the worker."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conveyor import Conveyor, InvalidOption, Job, JobState
from conveyor.integrations.starlette import worker_lifespan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from main import create_api  # noqa: E402

TOKEN = "t0ken-for-tests"


def test_a_job_sent_by_an_endpoint_runs_in_the_app(app: Conveyor) -> None:
    with TestClient(create_api(app, dashboard_token=TOKEN)) as client:
        sent = client.post("/images", json={"name": "cat.jpg"})
        assert sent.status_code == 202
        job_id = sent.json()["job"]
        done = app.wait_for(job_id, timeout=10)
        assert done.state is JobState.COMPLETED
        assert client.get(f"/jobs/{job_id}").json() == {
            "state": "completed",
            "result": {"thumbnail": "cat.jpg.thumb.png"},
        }
        seen = client.get(
            f"/conveyor/api/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert seen.status_code == 200 and seen.json()["state"] == "completed"
        assert len(app.list_workers()) == 1
    assert app.list_workers() == []


def test_shutdown_lets_the_running_job_finish(app: Conveyor) -> None:
    started = asyncio.Event()

    @app.job("slow")
    async def slow(job: Job) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with worker_lifespan(app, shutdown_timeout=10):
            yield
            job_id = await app.send_async("slow")
            await asyncio.wait_for(started.wait(), 10)
        # the worker stopped only after its running job completed
        assert (await app.get_job_async(job_id)).result == "finished"
        await app.close_async()

    with TestClient(FastAPI(lifespan=lifespan)):
        pass


def test_a_worker_that_fails_is_raised_at_shutdown(app: Conveyor) -> None:
    api = FastAPI(lifespan=worker_lifespan(app, concurrency=0))
    with pytest.raises(InvalidOption, match="concurrency"), TestClient(api):
        pass

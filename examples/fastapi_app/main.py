"""A FastAPI app that sends jobs from its endpoints and runs them in its own event loop, with
Conveyor's dashboard mounted under /conveyor.

Run it (Conveyor's schema migrated with ``conveyor migrate``)::

    CONVEYOR_DASHBOARD_TOKEN=secret uvicorn --factory main:main_api
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from fastapi import FastAPI
from pydantic import BaseModel

from conveyor import Conveyor, Job
from conveyor.integrations.starlette import worker_lifespan
from conveyor.web import create_app


class Image(BaseModel):
    name: str


def create_api(conveyor: Conveyor, *, dashboard_token: str) -> FastAPI:
    """The web app: its endpoints, the handler of its jobs, and the dashboard."""

    @conveyor.job("thumbnails.make", retry_limit=3)
    async def make_thumbnail(job: Job) -> dict[str, str]:
        return {"thumbnail": f"{job.data['image']}.thumb.png"}

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with worker_lifespan(conveyor, concurrency=5, shutdown_timeout=10):
            yield
        await conveyor.close_async()  # the pool belongs to this event loop

    api = FastAPI(lifespan=lifespan)

    @api.post("/images", status_code=202)
    async def upload(image: Image) -> dict[str, str]:
        job_id = await conveyor.send_async("thumbnails.make", {"image": image.name})
        return {"job": str(job_id)}

    @api.get("/jobs/{job_id}")
    async def job(job_id: UUID) -> dict[str, Any]:
        found = await conveyor.get_job_async(job_id)
        return {"state": found.state, "result": found.result}

    api.mount("/conveyor", create_app(conveyor, token=dashboard_token))
    return api


def main_api() -> FastAPI:
    """The app as ``uvicorn --factory`` builds it, configured from the environment."""
    conveyor = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))
    return create_api(conveyor, dashboard_token=os.environ["CONVEYOR_DASHBOARD_TOKEN"])

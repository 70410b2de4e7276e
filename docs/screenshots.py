"""Take the dashboard's screenshots: ``.venv/bin/python docs/screenshots.py``.

Fills a scratch schema with a small demo (queues, finished, failed and waiting jobs, a flow,
schedules, a worker fed by a steady trickle of jobs and one holding slow jobs, some claimed ahead),
serves the dashboard on a free port and saves PNGs of every page at 1280 px (``NAME.png``) and
390 px wide (``NAME-narrow.png``) to ``docs/screenshots/`` with the headless Chromium at
``/usr/bin/chromium``. The database is ``CONVEYOR_DATABASE_URL``, else the local test database.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import socket
import time
from pathlib import Path

import uvicorn
from anyio.from_thread import start_blocking_portal
from playwright.sync_api import Page, sync_playwright

from conveyor import Conveyor, Fail, Job
from conveyor.testing import LOCAL_TEST_DSN, IsolatedSchema
from conveyor.web import create_app

OUT = Path(__file__).parent / "screenshots"
TOKEN = "screenshots"
SCHEMA = "conveyor_screenshots"
QUEUES = ["emails.send", "reports.export", "billing.charge"]
WIDTHS = {"": 1280, "-narrow": 390}


def demo_app(dsn: str) -> Conveyor:
    app = Conveyor(dsn, schema=SCHEMA, retry_delay=1)

    @app.job("emails.send")
    async def send_email(job: Job) -> dict[str, bool]:
        await asyncio.sleep(random.uniform(0.01, 0.05))
        return {"sent": True}

    @app.job("reports.export")
    async def export(job: Job) -> dict[str, int]:
        for percent in (25, 50, 75):
            job.report_progress(percent, f"{percent}% of the rows written")
            await asyncio.sleep(0.05)
        return {"rows": 1200}

    @app.job("billing.charge", retry_limit=1)
    def charge(job: Job) -> str:
        if job.data["card"].endswith("0000"):
            raise Fail(f"card {job.data['card']} was declined")
        if job.data["amount"] > 900:
            raise ConnectionError("payment gateway timed out after 30 s")
        return "charged"

    @app.job("video.encode")
    async def encode(job: Job) -> None:
        for percent in range(0, 100, 5):
            job.report_progress(percent, f"frame {percent * 24}")
            await asyncio.sleep(1)
            if job.cancelled:  # the worker stops once the screenshots are taken
                return

    return app


async def seed(app: Conveyor) -> None:
    await app.create_queue_async("billing.charge", concurrency=2)
    await app.send_batch_async(
        [("emails.send", {"to": f"user{i}@example.com", "template": "welcome"}) for i in range(40)]
    )
    await app.send_batch_async(
        [("reports.export", {"report": "monthly", "month": m}) for m in range(1, 5)]
    )
    charges = [("billing.charge", {"card": "4242-4242", "amount": a}) for a in (120, 80, 950)]
    charges.append(("billing.charge", {"card": "4000-0000", "amount": 35}))
    await app.send_batch_async(charges)
    await app.drain_async(QUEUES, concurrency=4)
    await asyncio.sleep(1.2)  # the gateway timeout's retry falls due
    await app.drain_async(QUEUES, concurrency=4)
    await app.send_batch_async([("emails.send", {"to": f"late{i}@example.com"}) for i in range(6)])
    await app.send_async("reports.export", {"report": "yearly"}, start_after=3600)
    await app.flow_async(
        ("reports.export", {"report": "quarterly"}),
        [("video.encode", {"clip": n}) for n in range(1, 4)] + [("emails.send", {"to": "cfo"})],
    )
    await app.send_batch_async([("video.encode", {"clip": n}) for n in range(4, 8)])
    await app.schedule_async("daily-digest", "0 8 * * 1-5", queue="emails.send",
                             data={"kind": "digest"}, tz="Europe/Paris")  # fmt: skip
    await app.schedule_async(
        "refresh-reports", every=900, queue="reports.export", data={"report": "kpi"}
    )


def shoot(page: Page, url: str, name: str, wait: float = 0.5) -> None:
    """The page at each width."""
    for suffix, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 760})
        page.goto(url)
        page.wait_for_timeout(wait * 1000)
        page.screenshot(path=OUT / f"{name}{suffix}.png", full_page=True)
        print("wrote", OUT / f"{name}{suffix}.png")


def main() -> None:
    dsn = os.environ.get("CONVEYOR_DATABASE_URL", LOCAL_TEST_DSN)
    schema = IsolatedSchema(dsn, SCHEMA)
    schema.fresh()
    app = demo_app(dsn)
    OUT.mkdir(exist_ok=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(app, token=TOKEN, metrics=False), lifespan="off", log_level="warning"
        )
    )
    with start_blocking_portal() as portal:
        portal.call(seed, app)
        failed = portal.call(app.list_dead_async)[0].id
        flows = portal.call(functools.partial(app.list_jobs_async, "video.encode", order="asc"))
        child = flows[0].id
        serving = portal.start_task_soon(functools.partial(server.serve, sockets=[sock]))
        stop = asyncio.Event()
        worker = portal.start_task_soon(
            functools.partial(app.run_worker_async, ["emails.send"], 4, stop=stop)
        )
        # Two slots and two more claimed ahead: the workers page shows them apart.
        slow = portal.start_task_soon(
            functools.partial(
                app.run_worker_async, ["video.encode"], 2, stop=stop, prefetch=2,
                heartbeat_interval=0.5,
            )
        )  # fmt: skip
        while not server.started:
            time.sleep(0.05)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 760})
                shoot(page, f"{url}/login", "login", 0.2)
                page.set_viewport_size({"width": 1280, "height": 760})
                page.fill("input[name=token]", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_selector("h1:has-text('Queues')")
                # A trickle of work so that the live chart has something to draw.
                for _ in range(28):
                    batch = [("emails.send", {"n": n}) for n in range(random.randint(5, 40))]
                    portal.call(app.send_batch_async, batch)
                    page.wait_for_timeout(700)
                page.select_option("#chart-queue", "emails.send")
                page.screenshot(path=OUT / "overview.png", full_page=True)
                print("wrote", OUT / "overview.png")
                page.set_viewport_size({"width": 390, "height": 760})
                page.wait_for_timeout(3500)  # the charts redraw at the new width
                page.screenshot(path=OUT / "overview-narrow.png", full_page=True)
                print("wrote", OUT / "overview-narrow.png")
                shoot(page, f"{url}/jobs?queue=billing.charge", "jobs")
                # The bulk form after its dry run: the count it asks to confirm.
                page.set_viewport_size({"width": 1280, "height": 760})
                page.goto(f"{url}/jobs?queue=billing.charge&state=failed")
                page.click("#bulk summary")
                page.select_option("#bulk-form select[name=action]", "retry")
                page.click("#bulk-form button[type=submit]")
                page.wait_for_selector("#bulk-confirm:not([hidden])")
                page.screenshot(path=OUT / "jobs-bulk.png", full_page=True)
                print("wrote", OUT / "jobs-bulk.png")
                shoot(page, f"{url}/jobs/{failed}", "job")
                shoot(page, f"{url}/jobs/{child}/flow", "flow")
                shoot(page, f"{url}/dead", "dead")
                shoot(page, f"{url}/schedules", "schedules")
                shoot(page, f"{url}/workers", "workers", 1.5)
                browser.close()
        finally:
            portal.call(stop.set)
            worker.result(timeout=30)
            slow.result(timeout=60)
            server.should_exit = True
            serving.result(timeout=30)
            portal.call(app.close_async)
            sock.close()
            schema.drop()


if __name__ == "__main__":
    main()

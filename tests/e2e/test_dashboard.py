"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a uvicorn
server and a worker running on the test database: log in, watch counts change live, retry a
failed job, cancel a queued one."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal
from playwright.sync_api import Page, expect, sync_playwright

from conveyor import Conveyor, Job, JobState
from conveyor.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "e2e-dashboard-token"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)",
)


@dataclass
class Dashboard:
    """A served dashboard: its URL, the app behind it, and a worker started on demand."""

    url: str
    app: Conveyor
    portal: BlockingPortal
    broken: threading.Event
    worker: Future[int] | None = None
    stop: asyncio.Event | None = None

    def start_worker(self) -> None:
        self.stop = asyncio.Event()
        run = functools.partial(
            self.app.run_worker_async, ["e2e.web.work", "e2e.web.flaky"], 4,
            poll_interval=0.2, stop=self.stop,
        )  # fmt: skip
        self.worker = self.portal.start_task_soon(run)

    def stop_worker(self) -> None:
        if self.worker is not None and self.stop is not None:
            self.portal.call(self.stop.set)
            self.worker.result(timeout=30)


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def dashboard(conveyor_dsn: str, conveyor_schema: str) -> Iterator[Dashboard]:
    app = Conveyor(conveyor_dsn, schema=conveyor_schema)
    broken = threading.Event()

    @app.job("e2e.web.work")
    async def work(job: Job) -> int:
        await asyncio.sleep(0.05)
        return int(job.data["n"])

    @app.job("e2e.web.flaky", retry_limit=0)
    def flaky(job: Job) -> str:
        if broken.is_set():
            raise RuntimeError("the printer is on fire")
        return "printed"

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = create_app(app, token=TOKEN, metrics=False)
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="off"))
    with start_blocking_portal() as portal:
        serving = portal.start_task_soon(functools.partial(server.serve, sockets=[sock]))
        wait_until(lambda: server.started)
        board = Dashboard(f"http://127.0.0.1:{port}", app, portal, broken)
        try:
            yield board
        finally:
            board.stop_worker()
            server.should_exit = True
            serving.result(timeout=30)
            portal.call(app.close_async)
            app.close()
            sock.close()


@pytest.fixture
def page(dashboard: Dashboard) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def log_in(page: Page, url: str) -> None:
    page.goto(url + "/")
    assert "/login" in page.url
    page.fill("input[name=token]", "wrong")
    page.click("button[type=submit]")
    assert "Wrong token" in page.inner_text("main")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Queues')")


def test_counts_change_live_while_a_worker_runs(dashboard: Dashboard, page: Page) -> None:
    dashboard.app.send_batch([("e2e.web.work", {"n": i}) for i in range(30)])
    log_in(page, dashboard.url)
    row = page.locator('tr[data-queue="e2e.web.work"]')
    expect(row.locator('[data-count="created"]')).to_have_text("30")
    expect(row.locator('[data-count="completed"]')).to_have_text("0")

    dashboard.start_worker()
    # No reload: the page's live refresh brings the new counts.
    expect(row.locator('[data-count="completed"]')).to_have_text("30")
    expect(row.locator('[data-count="created"]')).to_have_text("0")
    # The page samples the counts for its charts: the backlog of the queue is drawn.
    page.select_option("#chart-queue", "e2e.web.work")
    expect(page.locator("#chart-backlog .line")).not_to_have_count(0)

    page.click("nav >> text=Workers")
    expect(page.locator("article.worker")).to_have_count(1)
    expect(page.locator("article.worker")).to_contain_text("e2e.web.work")


def test_open_a_failed_job_and_retry_it(dashboard: Dashboard, page: Page) -> None:
    dashboard.broken.set()
    dashboard.start_worker()
    job_id = dashboard.app.send("e2e.web.flaky", {"doc": "<b>report</b>"})
    wait_until(lambda: dashboard.app.get_job(job_id).state is JobState.FAILED)

    log_in(page, dashboard.url)
    page.click("nav >> text=Dead letters")
    page.click(f"a[href$='/jobs/{job_id}']")
    expect(page.locator("#job-state")).to_have_text("failed")
    expect(page.locator("details.error-entry summary")).to_contain_text("the printer is on fire")
    expect(page.locator("pre.traceback")).to_contain_text("Traceback")
    expect(page.locator("pre.json").first).to_contain_text('"doc": "<b>report</b>"')

    dashboard.broken.clear()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.action button:has-text('Retry')")
    wait_until(lambda: dashboard.app.get_job(job_id).state is JobState.COMPLETED)
    page.reload()
    expect(page.locator("#job-state")).to_have_text("completed")
    assert dashboard.app.get_job(job_id).result == "printed"


def test_cancel_a_queued_job_after_confirming(dashboard: Dashboard, page: Page) -> None:
    job_id = dashboard.app.send("e2e.web.later", {"n": 1}, start_after=3600)
    log_in(page, dashboard.url)
    page.goto(f"{dashboard.url}/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("created")

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("form.action button:has-text('Cancel')")
    page.wait_for_timeout(300)
    assert dashboard.app.get_job(job_id).state is JobState.CREATED

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.action button:has-text('Cancel')")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert dashboard.app.get_job(job_id).state is JobState.CANCELLED


def test_make_a_queue_fair_and_not_from_the_overview(dashboard: Dashboard, page: Page) -> None:
    dashboard.app.send("e2e.web.tenants", {"n": 1}, fair_key="t-1")
    log_in(page, dashboard.url)
    row = page.locator("tr[data-queue='e2e.web.tenants']")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("form.action button:has-text('Fair')").click()
    expect(row.locator(".state-fair")).to_be_visible()
    assert dashboard.app.get_queue("e2e.web.tenants").fair
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("form.action button:has-text('Not fair')").click()
    expect(row.locator(".state-fair")).to_have_count(0)
    assert not dashboard.app.get_queue("e2e.web.tenants").fair

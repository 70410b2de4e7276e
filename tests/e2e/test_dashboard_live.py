"""The live dashboard in headless Chromium: pages that update without reloading, the job page's
attempt timeline and flow links, the flow view, workers with what each runs or holds claimed,
queue pause/resume and bulk actions clicked end to end, escaped payloads, both widths.

One server, one worker and one browser for the whole module (each test uses queues of its own);
every test fails on a console error or an uncaught script error.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conveyor import Conveyor, Job, JobState
from conveyor.testing import IsolatedSchema
from conveyor.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "live-dashboard-token"
WORKED = ["live.flaky", "live.quick"]

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)",
    ),
    # The server and worker live for the module, so they outlast each test; the module's fixture
    # stops them and closes the app.
    pytest.mark.allow_leaks,
]


@dataclass
class Board:
    url: str
    app: Conveyor
    portal: BlockingPortal
    gate: threading.Event
    stops: list[asyncio.Event] = field(default_factory=list)

    def worker(self, queues: list[str], concurrency: int, **options: Any) -> None:
        stop = asyncio.Event()
        self.stops.append(stop)
        run = functools.partial(
            self.app.run_worker_async, queues, concurrency, poll_interval=0.1, stop=stop,
            stale_after=3, **options,
        )  # fmt: skip
        self.portal.start_task_soon(run)


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def board(conveyor_dsn: str) -> Iterator[Board]:
    worker_name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    schema = IsolatedSchema(conveyor_dsn, f"conveyor_live_{worker_name}_{os.getpid()}")
    app = Conveyor(conveyor_dsn, schema=schema.fresh())
    gate = threading.Event()

    @app.job("live.flaky", retry_delay=0)
    async def flaky(job: Job) -> dict[str, str]:
        if job.attempt == 1:
            raise RuntimeError("first attempt <b>breaks</b>")
        await asyncio.to_thread(gate.wait, 30)
        return {"done": "<i>second</i>"}

    @app.job("live.quick")
    async def quick(job: Job) -> int:
        return 1

    @app.job("live.hold")
    async def hold(job: Job) -> None:
        await asyncio.to_thread(gate.wait, 30)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = create_app(app, token=TOKEN, metrics=False)
    with start_blocking_portal() as portal:
        board = Board(f"http://127.0.0.1:{port}", app, portal, gate)
        server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="off"))
        serving = portal.start_task_soon(functools.partial(server.serve, sockets=[sock]))
        wait_until(lambda: server.started)
        board.worker(WORKED, 2)
        try:
            yield board
        finally:
            gate.set()
            for stop in board.stops:
                portal.call(stop.set)
            server.should_exit = True
            serving.result(timeout=30)
            portal.call(app.close_async)
            app.close()
            sock.close()
            schema.drop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(board: Board, browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(board.url + "/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Queues')")
    yield page
    context.close()
    assert problems == [], problems


def mark(page: Page) -> None:
    """Tag the loaded document: the tag survives only if the page is never reloaded."""
    page.evaluate("window.__unreloaded = true")


def still_unreloaded(page: Page) -> bool:
    return bool(page.evaluate("window.__unreloaded === true"))


def test_the_job_page_follows_each_attempt_live(board: Board, page: Page) -> None:
    board.gate.clear()
    job_id = board.app.send("live.flaky", {"order": 7}, start_after=3600)
    page.goto(f"{board.url}/jobs/{job_id}")
    mark(page)
    expect(page.locator("#job-state")).to_have_text("created")
    expect(page.locator("#job-timeline")).to_contain_text("Not claimed by a worker yet")

    board.app.retry(job_id)  # due now: the worker fails attempt 1, then holds attempt 2
    attempts = page.locator("li.attempt")
    expect(attempts).to_have_count(2)
    expect(page.locator("#job-state")).to_have_text("active")
    expect(page.locator("#job-phase")).to_have_text("running")
    first = attempts.nth(0)
    expect(first).to_contain_text("failed")
    # The error's markup is text, and its traceback is there.
    expect(first.locator("summary")).to_contain_text("RuntimeError: first attempt <b>breaks</b>")
    expect(first.locator("pre.traceback")).to_contain_text("Traceback")
    job = board.app.get_job(job_id)
    worker = str(job.worker_id)
    expect(first).to_contain_text(worker)
    for step in ("claimed", "started", "finished"):
        expect(first.locator(f"dt:has-text('{step}') + dd")).to_contain_text("UTC")
    expect(attempts.nth(1)).to_contain_text("running")

    board.gate.set()
    expect(page.locator("#job-state")).to_have_text("completed")
    expect(attempts.nth(1)).to_contain_text("completed")
    expect(page.locator("#job-result")).to_contain_text('"done": "<i>second</i>"')
    assert still_unreloaded(page)


def test_flow_links_and_the_flow_view(board: Board, page: Page) -> None:
    parent = board.app.flow(
        ("live.report", {"part": "all"}),
        [("live.part", {"part": 1}), ("live.part", {"part": 2})],
    )
    children = board.app.get_job(parent).depends_on
    page.goto(f"{board.url}/jobs/{parent}")
    expect(page.locator("#job-state")).to_have_text("waiting")
    depends = page.locator("#job-flow div:has(> h3:has-text('Depends on'))")
    expect(depends.locator("li")).to_have_count(2)
    expect(depends).to_contain_text("created")

    page.click(f"#job-flow a[href$='/jobs/{children[0]}']")
    needed = page.locator("#job-flow div:has(> h3:has-text('Needed by'))")
    expect(needed.locator(f"a[href$='/jobs/{parent}']")).to_be_visible()
    expect(needed).to_contain_text("waiting")

    page.click("a:has-text('Flow view')")
    expect(page.locator("h1")).to_contain_text("3 jobs")
    tree = page.locator("#flow-tree")
    expect(tree.locator(".node")).to_have_count(3)
    expect(tree.locator(".node.focus")).to_contain_text(str(children[0]))
    # The top of the flow comes first, its children under it.
    expect(tree.locator("ul.tree > li > .node")).to_contain_text(str(parent))

    board.app.cancel(children[1])
    expect(tree.locator(f".node:has(a[href$='/jobs/{children[1]}'])")).to_contain_text("cancelled")


def test_workers_show_running_and_claimed_jobs_apart(board: Board, page: Page) -> None:
    board.gate.clear()
    ids = [board.app.send("live.hold", {"n": n}) for n in range(3)]
    board.worker(["live.hold"], 1, prefetch=2, heartbeat_interval=0.3)
    page.goto(f"{board.url}/workers")
    mark(page)
    card = page.locator("article.worker:has(h3:has-text('Claimed, not started (2'))")
    expect(card.locator("[data-running] li")).to_have_count(1)
    expect(card.locator("[data-claimed] li")).to_have_count(2)
    expect(card.locator("[data-heartbeat]")).to_contain_text("s ago")

    page.click("nav >> text=Queues")
    row = page.locator('tr[data-queue="live.hold"]')
    expect(row.locator('[data-count="running"]')).to_have_text("1")
    expect(row.locator('[data-count="claimed"]')).to_have_text("2")

    board.gate.set()
    wait_until(lambda: all(board.app.get_job(i).state is JobState.COMPLETED for i in ids))
    expect(row.locator('[data-count="completed"]')).to_have_text("3")
    expect(row.locator('[data-count="claimed"]')).to_have_text("0")


def test_jobs_list_is_live_and_bulk_actions_count_first(board: Board, page: Page) -> None:
    board.app.send("live.bulk", {"n": 0}, start_after=3600)
    page.goto(f"{board.url}/jobs?queue=live.bulk")
    mark(page)
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    board.app.send_batch([("live.bulk", {"n": n}, {"start_after": 3600}) for n in (1, 2)])
    expect(page.locator("#jobs tbody tr")).to_have_count(3)

    page.click("#bulk summary")
    page.select_option("#bulk-form select[name=action]", "cancel")
    page.click("#bulk-form button[type=submit]")
    expect(page.locator("#bulk-count")).to_contain_text("3 jobs match")
    page.click("#bulk-go")
    expect(page.locator("#flash")).to_contain_text("cancel: 3 of 3")
    expect(page.locator("#jobs tbody .state-cancelled")).to_have_count(3)
    states = {j.state for j in board.app.list_jobs("live.bulk")}
    assert states == {JobState.CANCELLED}
    assert still_unreloaded(page)


def test_pause_resume_and_the_charts_on_the_overview(board: Board, page: Page) -> None:
    board.app.send_batch([("live.quick", {"n": n}) for n in range(5)])
    page.goto(board.url + "/")
    page.select_option("#chart-queue", "live.quick")
    for chart, unit in (("throughput", "jobs/min"), ("wait", "ms"), ("backlog", "jobs")):
        svg = page.locator(f"#chart-{chart}")
        expect(svg.locator("text.unit")).to_have_text(unit)
        # Five values on the y axis, and times on the x axis every 15 or 30 minutes.
        assert svg.locator("text.tick").count() in (8, 10)
        expect(svg.locator("text.tick").last).to_have_text(re.compile(r"^\d\d:\d\d$"))
    expect(page.locator("#chart-throughput ~ .legend li")).to_have_text(
        ["completed", "failed", "retried"]
    )
    expect(page.locator("#chart-backlog .line")).not_to_have_count(0)

    row = page.locator('tr[data-queue="live.quick"]')
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Pause')").click()
    expect(page.locator("#flash")).to_contain_text("Done: Pause")
    expect(row.locator(".state-paused")).to_have_text("paused")
    assert board.app.get_queue("live.quick").paused
    board.app.send("live.quick", {"n": "held"})
    page.wait_for_timeout(500)
    expect(row.locator('[data-count="created"]')).to_have_text("1")  # nothing runs it

    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Resume')").click()
    expect(row.locator("button:has-text('Pause')")).to_be_visible()
    assert not board.app.get_queue("live.quick").paused
    expect(row.locator('[data-count="created"]')).to_have_text("0")


def test_a_fair_queue_is_shown_fair_on_the_overview(board: Board, page: Page) -> None:
    board.app.create_queue("live.fair", fair=True)
    board.app.send("live.fair", {"n": 1}, fair_key="t-1")
    page.goto(board.url + "/")
    expect(page.locator('tr[data-queue="live.fair"] .state-fair')).to_have_text("fair")
    expect(page.locator(".state-fair")).to_have_count(1)  # only the fair queue


def test_payloads_are_shown_as_text(board: Board, page: Page) -> None:
    evil = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"
    job_id = board.app.send("live.evil", {"html": evil}, start_after=3600)
    page.goto(f"{board.url}/jobs/{job_id}")
    expect(page.locator("#job-data")).to_contain_text(evil)
    page.goto(f"{board.url}/jobs?queue=live.evil")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    page.wait_for_timeout(2500)  # one live refresh swaps the rows in again
    assert page.evaluate("window.__pwned") is None


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_fits_the_width_and_is_keyboard_reachable(
    board: Board, page: Page, width: int
) -> None:
    job_id = board.app.send("live.quick", {"n": "fit"})
    board.app.wait_for(job_id, timeout=20)
    page.set_viewport_size({"width": width, "height": 800})
    for path in ("/", "/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/flow", "/dead", "/schedules",
                 "/workers"):  # fmt: skip
        page.goto(board.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than {width} px"
    page.goto(board.url + "/jobs")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.closest('#jobs') !== null"):
            break
    assert page.evaluate("document.activeElement.tagName") == "A"
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_contain_text("Job")

"""What watching costs (issue 15): a drain with the dashboard open in a browser against the same
drain with no dashboard. (Not run in CI.)

    .venv/bin/python -m bench.dashboard [--dsn DSN] [--jobs 60000] [--rounds 3] [--history 0]
                                        [--pages / --pages /jobs]

Each round drains ``--jobs`` pre-loaded no-op jobs with one worker process (concurrency 10, as
bench.run's drain), once with nothing watching and once while ``conveyor dashboard`` serves the
schema and headless Chromium (Playwright) keeps each of ``--pages`` open, logged in, polling as
an operator's tab does; the two alternate, and which goes first alternates by round. With
``--history N`` the schema also holds N finished jobs (and no future ones) before each drain.
Prints each round, the medians and the paired ratio (open / closed; the target is >= 0.95),
and for each drain watched, the CPU seconds the dashboard's server process and the browser's
processes spent during it, beside the drain's own length.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import psutil
from playwright.sync_api import sync_playwright

from bench.run import ROOT, SCHEMA, exactly_once, reset, run_workers, seed_large_tables
from conveyor.testing import LOCAL_TEST_DSN

TOKEN = "bench-dashboard-token"
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds of these processes so far (0 for one that ended)."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def dashboard_open(dsn: str, pages: Sequence[str]) -> Iterator[dict[str, list[psutil.Process]]]:
    """``conveyor dashboard`` on the bench schema, with a logged-in browser tab per page; yields
    the server's process and the browser's (for their CPU)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "--dsn", dsn, "--schema", SCHEMA, "dashboard",
         "--port", str(port), "--token", TOKEN],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("bench: the dashboard did not start")
            time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            login = context.new_page()
            login.goto(url + "/login")
            login.fill("input[name=token]", TOKEN)
            login.click("button[type=submit]")
            login.wait_for_selector("h1")
            for path in pages:
                tab = context.new_page()
                tab.goto(url + path)
                tab.wait_for_selector("h1")
                if "/login" in tab.url:
                    sys.exit(f"bench: the tab of {path} was not logged in")
            login.close()
            browser_procs = [
                p for p in psutil.Process().children(recursive=True) if "chrom" in p.name()
            ]
            yield {"server": [psutil.Process(server.pid)], "browser": browser_procs}
            browser.close()
    finally:
        server.terminate()
        server.wait(30)


def drain(dsn: str, jobs: int, history: int, pages: Sequence[str] | None) -> tuple[float, str]:
    """Jobs/s of one drain, the dashboard open on ``pages`` (None: no dashboard), and what the
    dashboard's processes spent during it."""
    with reset(dsn) as app:
        if history:
            seed_large_tables(dsn, history, 0)
        app.send_batch([("bench", {"i": i}) for i in range(jobs)])
    watching = dashboard_open(dsn, pages) if pages is not None else contextlib.nullcontext({})
    spent = ""
    with watching as procs:
        time.sleep(2.0 if pages is not None else 0.0)  # the tabs' first loads are done
        before = {name: cpu_seconds(found) for name, found in procs.items()}
        began = time.monotonic()
        results = run_workers(dsn, "drain", 10, 1)
        took = time.monotonic() - began
        if procs:
            used = {name: cpu_seconds(found) - before[name] for name, found in procs.items()}
            spent = (
                f" (in {took:.1f} s: dashboard server {used['server']:.2f} CPU s, "
                f"browser {used['browser']:.2f} CPU s)"
            )
    if sum(r["ran"] for r in results) != jobs or not exactly_once(dsn, jobs, history, 0):
        sys.exit("bench: a drain lost or repeated jobs")
    return jobs / max(r["seconds"] for r in results), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=LOCAL_TEST_DSN)
    parser.add_argument("--jobs", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", type=int, default=0, help="finished jobs in the schema")
    parser.add_argument("--pages", action="append", help="dashboard paths to keep open ('/')")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    pages = args.pages or ["/"]
    closed: list[float] = []
    opened: list[float] = []
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for watch in order:
            rate, spent = drain(args.dsn, args.jobs, args.history, pages if watch else None)
            (opened if watch else closed).append(rate)
            label = "dashboard open" if watch else "no dashboard"
            print(f"round {r + 1}: {label:15} {rate:8,.0f} jobs/s{spent}", flush=True)
        load.append(os.getloadavg()[0])
    paired = [o / c for o, c in zip(opened, closed, strict=True)]
    figures = {
        "jobs": args.jobs, "history": args.history, "pages": pages,
        "closed": closed, "open": opened, "paired": paired,
        "closed_median": statistics.median(closed), "open_median": statistics.median(opened),
        "ratio_of_medians": statistics.median(opened) / statistics.median(closed),
        "paired_median": statistics.median(paired), "load": load,
    }  # fmt: skip
    print(
        f"\n| | no dashboard | dashboard open ({', '.join(pages)}) | open / closed |\n"
        f"|---|---:|---:|---:|\n"
        f"| drain, jobs/s, rounds | {' / '.join(f'{x:,.0f}' for x in closed)} "
        f"| {' / '.join(f'{x:,.0f}' for x in opened)} "
        f"| {' / '.join(f'{x:.2f}' for x in paired)} |\n"
        f"| median | {figures['closed_median']:,.0f} | {figures['open_median']:,.0f} "
        f"| {figures['ratio_of_medians']:.2f}x (paired median {figures['paired_median']:.2f}x; "
        f"target >= 0.95) |\n"
        f"\nload average over the run: {', '.join(f'{x:.1f}' for x in load)}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()

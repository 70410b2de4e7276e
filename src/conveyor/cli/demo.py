"""``conveyor demo``: the helpdesk of ``conveyor.demo_app`` end to end, with nothing configured.

One process runs it all: the database (``CONVEYOR_DATABASE_URL``/``DATABASE_URL`` if set, else
the embedded PostgreSQL), a mail sink (a real SMTP server on loopback, whose mailbox is a page
beside the dashboard), the helpdesk's jobs in an in-process worker (or ``--processes`` worker
processes), a traffic generator standing in for its users, and the dashboard. Needs the
``embedded`` extra (``demo`` is another name for it); the helpdesk ships inside the package, so
an installed wheel runs it from any directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import html
import logging
import os
import secrets
import signal
import socket
import sys
import time
import webbrowser
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.cli import EXIT_USAGE, CliContext, fail, one_line_errors
from conveyor.cli.dev import start_embedded
from conveyor.embedded import PG_MAJOR, default_data_dir
from conveyor.errors import ConfigurationError
from conveyor.events import Event

HELPDESK_APP = "conveyor.demo_app.jobs:app"
WORKER_WAIT = 30.0
# Events worth a console line: the retries and dead letters are the demo's point.
FEED = ("job.retried", "job.dead")


@click.command()
@click.option("--duration", type=float, help="Run this many seconds, then stop and exit 0.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard address.")
@click.option("--port", type=int, default=8000, show_default=True, help="Dashboard port (0: any).")
@click.option("--no-browser", is_flag=True, help="Do not open the dashboard in a browser.")
@click.option(
    "--token", envvar="CONVEYOR_DASHBOARD_TOKEN",
    help="Dashboard token (else CONVEYOR_DASHBOARD_TOKEN; else one is made and printed).",
)  # fmt: skip
@click.option(
    "--embedded", "force_embedded", is_flag=True,
    help="Use the embedded PostgreSQL even when CONVEYOR_DATABASE_URL or DATABASE_URL is set.",
)  # fmt: skip
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Data directory of the embedded PostgreSQL (default: as for `conveyor dev`).",
)  # fmt: skip
@click.option(
    "--processes", type=int, default=0, show_default=True,
    help="Worker processes; 0 runs the worker inside the demo process.",
)  # fmt: skip
@click.option(
    "--interval", type=float, default=2.0, show_default=True,
    help="Seconds between two rounds of generated traffic.",
)  # fmt: skip
@click.pass_obj
@one_line_errors
def demo(
    cli: CliContext,
    duration: float | None,
    host: str,
    port: int,
    no_browser: bool,
    token: str | None,
    force_embedded: bool,
    data_dir: Path | None,
    processes: int,
    interval: float,
) -> None:
    """Run the helpdesk demo: jobs, mail sink, traffic and the dashboard, until Ctrl-C."""
    if processes < 0 or interval <= 0 or (duration is not None and duration <= 0):
        fail("--processes must be >= 0, --interval and --duration > 0", EXIT_USAGE)
    try:
        from aiosmtpd.smtp import SMTP  # noqa: F401

        from conveyor.web import create_app  # noqa: F401
    except ImportError as exc:
        fail(f"the demo needs the extra: pip install 'conveyor[embedded]' ({exc})", EXIT_USAGE)
    # The demo prints its own feed of outcomes; the workers' job log lines would repeat each
    # failure on stderr (worker processes started with --processes log as configured there).
    logging.getLogger("conveyor.job").setLevel(logging.CRITICAL)
    token = token or secrets.token_urlsafe(18)
    settings = Settings(token, duration, processes, interval, not no_browser)
    try:
        serve_demo(cli, listen(host, port), force_embedded, data_dir, settings)
    except KeyboardInterrupt:
        # Ctrl-C while the database starts, before the demo's own handler is in place.
        sys.exit(130)


def serve_demo(
    cli: CliContext,
    listener: socket.socket,
    force_embedded: bool,
    data_dir: Path | None,
    settings: Settings,
) -> None:
    """Start the database (unless one is configured), then run the demo on it."""
    configured = None if force_embedded else cli.dsn or os.environ.get("DATABASE_URL")
    with contextlib.ExitStack() as stack:
        stack.callback(listener.close)
        if configured:
            dsn, where = configured, "the configured database"
        else:
            directory = data_dir or default_data_dir()
            dsn = start_embedded(stack, directory)
            where = f"embedded PostgreSQL {PG_MAJOR} (data in {directory})"
        # The helpdesk reads its configuration from the environment, like any deployed app, and
        # worker processes inherit it.
        os.environ["CONVEYOR_DATABASE_URL"] = dsn
        os.environ["CONVEYOR_SCHEMA"] = cli.schema
        asyncio.run(run(listener, settings, where, dsn))


@dataclass(frozen=True, slots=True)
class Settings:
    """The demo's options, past validation."""

    token: str
    duration: float | None
    processes: int
    interval: float
    browser: bool


def listen(host: str, port: int) -> socket.socket:
    """Bind the dashboard's socket first, so a busy port fails at once with one line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class MailSink:
    """An SMTP server that keeps what it receives (the newest ``keep`` messages) for the mailbox
    page, instead of delivering it."""

    def __init__(self, keep: int = 500) -> None:
        self.messages: deque[dict[str, str]] = deque(maxlen=keep)
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd's hook for one accepted message."""
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(("plain",))
        self.messages.appendleft(
            {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "from": str(message["From"]),
                "to": ", ".join(envelope.rcpt_tos),
                "subject": str(message["Subject"]),
                "body": body.get_content() if body is not None else "",
            }
        )
        self.received += 1
        return "250 Message accepted for delivery"

    async def start(self, host: str) -> asyncio.Server:
        """Listen on ``host`` at a free port."""
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        # A fixed hostname: the default asks DNS for this machine's name, which can hang.
        return await loop.create_server(lambda: SMTP(self, hostname="localhost"), host, 0)

    def routes(self) -> list[Any]:
        """``/`` (the mailbox page, refreshed every few seconds) and ``/messages.json``."""
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route

        async def page(request: Request) -> Response:
            rows = "".join(
                "<tr><td>{at}</td><td>{to}</td><td><details><summary>{subject}</summary>"
                "<pre>{body}</pre></details></td></tr>".format(
                    **{k: html.escape(v) for k, v in m.items()}
                )
                for m in list(self.messages)
            )
            return HTMLResponse(MAILBOX_PAGE.format(count=self.received, rows=rows))

        async def messages(request: Request) -> Response:
            return JSONResponse({"received": self.received, "messages": list(self.messages)})

        return [Route("/", page), Route("/messages.json", messages)]


MAILBOX_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="3"><title>Demo mailbox</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}td{{padding:.3em .8em;vertical-align:top;
border-bottom:1px solid #ddd}}pre{{white-space:pre-wrap}}</style></head><body>
<h1>Demo mailbox</h1><p>{count} emails received by the demo's SMTP sink. They go nowhere else.
<a href="/">Back to the dashboard</a></p>
<table><tr><th>Received (UTC)</th><th>To</th><th>Subject</th></tr>{rows}</table></body></html>
"""


async def run(listener: socket.socket, settings: Settings, where: str, dsn: str) -> None:
    """Run every part until the duration is over, a signal arrives or a part fails, then stop
    them in the reverse order of their start."""
    import uvicorn
    from starlette.routing import Mount

    from conveyor.demo_app import jobs, service
    from conveyor.demo_app import traffic as people
    from conveyor.web import create_app, login_link
    from conveyor.web.security import LOGIN_LINK_SECONDS

    app = jobs.app
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.duration is not None:
        loop.call_later(settings.duration, stop.set)
    sink = MailSink()
    try:
        async with contextlib.AsyncExitStack() as parts:
            smtp = await sink.start("127.0.0.1")
            parts.push_async_callback(close_server, smtp)
            smtp_port = smtp.sockets[0].getsockname()[1]
            os.environ["HELPDESK_SMTP"] = f"127.0.0.1:{smtp_port}"
            await service.setup()
            for name in FEED:
                app.on(name)(print_event)

            dashboard = create_app(app, token=settings.token)
            dashboard.router.routes.insert(0, Mount("/mail", routes=sink.routes()))
            server = quiet_server(uvicorn.Config(dashboard, log_level="warning"))
            serving = asyncio.create_task(server.serve(sockets=[listener]))
            parts.push_async_callback(stop_serving, server, serving)

            known = {w.id for w in await app.list_workers_async()}
            workers = asyncio.create_task(run_workers(app, settings.processes, stop))
            parts.push_async_callback(finish, workers, stop)
            await wait_for_worker(app, known, workers)
            traffic = asyncio.create_task(people.run(stop, settings.interval))
            parts.push_async_callback(finish, traffic, stop)

            bound_host, bound_port = listener.getsockname()[:2]
            url = f"http://{bound_host}:{bound_port}/"
            link = login_link(dashboard, url)
            expiry = f"works once, within {LOGIN_LINK_SECONDS / 60:g} minutes"
            print_banner(url, f"{link}  ({expiry})", settings, where, smtp_port, dsn)
            if settings.browser and has_display():
                # In a thread: starting a browser can take a while, and the loop serves meanwhile.
                loop.run_in_executor(None, webbrowser.open, link)
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait(
                (stopping, serving, workers, traffic), return_when=asyncio.FIRST_COMPLETED
            )
            stopping.cancel()
            print("Stopping: traffic, workers, dashboard, mail sink...", flush=True)
        await print_summary(app, sink)
    finally:
        await app.close_async()


def has_display() -> bool:
    """Whether a browser would open a window; without one, Python falls back to a text browser
    that takes over the terminal."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def finish(task: asyncio.Task[Any], stop: asyncio.Event) -> None:
    """Tell a part to stop and wait for it; its error, if it failed, is raised here."""
    stop.set()
    await task


async def stop_serving(server: Any, serving: asyncio.Task[None]) -> None:
    server.should_exit = True
    await serving


async def close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


def quiet_server(config: Any) -> Any:
    """A uvicorn server without its own signal handling: the demo stops it, in order."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


async def run_workers(app: Conveyor, processes: int, stop: asyncio.Event) -> int:
    """A worker in this process until ``stop``; or ``conveyor worker --processes N``, stopped
    with SIGTERM, whose exit code is returned."""
    if processes == 0:
        return await app.run_worker_async(
            concurrency=10, stop=stop, poll_interval=1.0, shutdown_timeout=5
        )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conveyor.cli", "worker", HELPDESK_APP,
        "--processes", str(processes), "--poll-interval", "1", "--shutdown-timeout", "5",
        # Its own session: Ctrl-C in the terminal reaches the demo only, which then sends the one
        # SIGTERM (a second signal would make the workers drop their jobs at once).
        start_new_session=True,
    )  # fmt: skip
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait(
        (stopping, asyncio.create_task(child.wait())), return_when=asyncio.FIRST_COMPLETED
    )
    stopping.cancel()
    if child.returncode is None:
        child.send_signal(signal.SIGTERM)
    return await child.wait()


async def wait_for_worker(app: Conveyor, known: set[Any], workers: asyncio.Task[int]) -> None:
    """Wait until a new worker registered: it has written the queue defaults of the helpdesk's
    handlers by then, which the jobs published from now on take."""
    deadline = time.monotonic() + WORKER_WAIT
    while not ({w.id for w in await app.list_workers_async()} - known):
        if workers.done():
            workers.result()
            raise ConfigurationError("the demo's worker stopped as it started")
        if time.monotonic() > deadline:
            raise ConfigurationError(f"the demo's worker did not start within {WORKER_WAIT:g}s")
        await asyncio.sleep(0.1)


def print_event(event: Event) -> None:
    """One console line per retry and per dead letter."""
    job, error = event.job, event.error or {}
    if job is None:
        return
    what = "will retry" if event.name == "job.retried" else "is dead (see Dead letters)"
    message = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    print(f"  {job.queue} attempt {job.attempt} failed and {what}: {message}", flush=True)


def print_banner(
    url: str, link: str, settings: Settings, where: str, smtp_port: int, dsn: str
) -> None:
    lasting = f"for {settings.duration:g} s" if settings.duration else "until Ctrl-C"
    worker = f"{settings.processes} worker processes" if settings.processes else "one worker"
    print(
        f"Conveyor demo: the InsightDesk helpdesk, running {lasting}\n"
        f"  Database:  {where}\n"
        f"  DSN:       {dsn}  (another terminal joins with CONVEYOR_DATABASE_URL set to it)\n"
        f"  Dashboard: {url}\n"
        f"  Log in:    {link}\n"
        f"  Token:     {settings.token}  (for the login page and the API)\n"
        f"  Mailbox:   {url}mail/  (SMTP sink on 127.0.0.1:{smtp_port})\n"
        f"  Jobs:      {worker}; new sign-ups and tickets every {settings.interval:g} s",
        flush=True,
    )


async def print_summary(app: Conveyor, sink: MailSink) -> None:
    stats = await app.queue_stats_async()
    print(f"Emails received by the mail sink: {sink.received}")
    print("Jobs by queue and state:")
    for queue in sorted(stats, key=lambda s: s.queue):
        counts = ", ".join(f"{state} {n}" for state, n in queue.counts.items() if n)
        print(f"  {queue.queue:20} {counts or 'none left'}")

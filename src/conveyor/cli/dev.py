"""``conveyor dev``: an embedded PostgreSQL for local development, nothing to install or configure.

Needs the ``embedded`` extra. The server keeps its data in a directory reused across runs, listens
on a Unix socket inside it (never on a TCP port, so it cannot clash with a system PostgreSQL), and
runs until Ctrl-C. ``--check`` proves the whole path once: start, migrate, send a job, run it
through a worker, a LISTEN/NOTIFY round trip, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import FrameType

import click

from conveyor.app import Conveyor
from conveyor.cli import EXIT_CHECK_FAILED, EXIT_DATABASE, CliContext, fail, one_line_errors
from conveyor.config import READ_DSN_VARIABLE
from conveyor.embedded import PG_MAJOR, default_data_dir, embedded_postgres
from conveyor.errors import ConveyorError
from conveyor.models import Job, JobState

PROBE_QUEUE = "conveyor.dev.check"
# Generous for a NOTIFY on a Unix socket (it takes about a millisecond), tight enough to fail fast.
NOTIFY_TIMEOUT = 5.0


class ProbeFailed(ConveyorError):
    """A step of ``conveyor dev --check`` did not do what it should."""


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Where the server keeps its data (default: $CONVEYOR_EMBEDDED_DIR, else "
    f"~/.cache/conveyor/pg{PG_MAJOR}, or /var/lib/conveyor/pg{PG_MAJOR} as root); reused "
    "across runs.",
)
@click.option(
    "--check", is_flag=True,
    help="Start the server, probe it (migrate, send, work a job, LISTEN/NOTIFY), stop, exit.",
)  # fmt: skip
@click.pass_obj
@one_line_errors
def dev(cli: CliContext, data_dir: Path | None, check: bool) -> None:
    """Run an embedded PostgreSQL with Conveyor's schema until Ctrl-C, and print its DSN."""
    cli.refuse_database("dev", "it starts an embedded server of its own")
    try:
        run_dev(cli, data_dir or default_data_dir(), check)
    except KeyboardInterrupt:
        # Ctrl-C while the server starts, before the handler that waits for it is in place.
        sys.exit(130)


def run_dev(cli: CliContext, directory: Path, check: bool) -> None:
    """Start the server in ``directory``; probe it, or serve until a signal; stop it."""
    with contextlib.ExitStack() as stack:
        url = start_embedded(stack, directory)
        if check:
            try:
                steps = asyncio.run(probe(url, cli.schema))
            except ProbeFailed as exc:
                fail(f"dev --check: {exc}", EXIT_CHECK_FAILED)
            click.echo(f"ok: embedded PostgreSQL {PG_MAJOR} in {directory}: {'; '.join(steps)}")
            return
        app = Conveyor(url, schema=cli.schema)
        try:
            applied = app.migrate()
        finally:
            app.close()
        schema_note = f"applied {', '.join(applied)}" if applied else "up to date"
        click.echo(f"Embedded PostgreSQL {PG_MAJOR} is running, data in {directory}")
        click.echo(f"Schema {cli.schema!r}: {schema_note}")
        click.echo(f"DSN: {url}")
        click.echo(f"export CONVEYOR_DATABASE_URL={shlex.quote(url)}")
        wait_for_signal(ready="Press Ctrl-C to stop the server.")
    if (directory / "postmaster.pid").exists():
        click.echo("Embedded PostgreSQL left running: another process still uses it.")
    else:
        click.echo("Embedded PostgreSQL stopped.")


def start_embedded(stack: contextlib.ExitStack, directory: Path) -> str:
    """Start (or join) the embedded server in ``directory`` and return its URL; it stops when
    ``stack`` closes. A server that cannot start ends the command with one line, exit code 3.

    ``CONVEYOR_READ_DATABASE_URL`` leaves this process's environment (and its children's): it
    names a standby of the configured database, which the embedded server replaces."""
    os.environ.pop(READ_DSN_VARIABLE, None)
    try:
        return stack.enter_context(embedded_postgres(directory))
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"the embedded PostgreSQL did not start in {directory}: {first_line}", EXIT_DATABASE)


def wait_for_signal(ready: str) -> None:
    """Block until SIGINT or SIGTERM, so that either one stops the server cleanly (a bare SIGTERM
    would end the process without stopping it, and leave it running). ``ready`` is printed once
    the handlers are in place: a signal sent as soon as it appears is handled, not fatal."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    click.echo(ready)
    sys.stdout.flush()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def probe(url: str, schema: str) -> list[str]:
    """Migrate, send a job, work it with a worker, and time a LISTEN/NOTIFY round trip; return
    one line per step done, or raise :class:`ProbeFailed` naming the step that went wrong."""
    app = Conveyor(url, schema=schema)

    @app.job(PROBE_QUEUE, retry_limit=0)
    async def echo(job: Job) -> object:
        return job.data

    try:
        applied = await app.migrate_async()
        steps = [f"migrated ({', '.join(applied) or 'up to date'})"]
        nonce = uuid.uuid4().hex
        # A short retention: the next worker's maintenance deletes the probe job.
        job_id = await app.send_async(PROBE_QUEUE, {"nonce": nonce}, retention=60)
        await app.drain_async([PROBE_QUEUE])
        job = await app.get_job_async(job_id)
        if job.state != JobState.COMPLETED or job.result != {"nonce": nonce}:
            raise ProbeFailed(f"the probe job ended {job.state} with result {job.result!r}")
        steps.append("a job was sent and completed by a worker")
        findings = await app.diagnose_async(notify_timeout=NOTIFY_TIMEOUT)
        notify = [f for f in findings if f.check == "notify"]
        if not notify or any(f.severity != "ok" for f in notify):
            raise ProbeFailed(notify[0].message if notify else "LISTEN/NOTIFY was not checked")
        steps.append(notify[0].message)
        return steps
    finally:
        await app.close_async()

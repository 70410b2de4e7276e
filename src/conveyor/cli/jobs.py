"""``conveyor jobs list|show|watch``, the bulk actions ``conveyor jobs
cancel|retry|delete|reprioritize`` by filter, ``conveyor retry ID`` and ``conveyor cancel ID``."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.bulk import ACTION_STATES
from conveyor.cli import EXIT_CHECK_FAILED, CliContext, fail, one_line_errors
from conveyor.cli.common import (
    age,
    console,
    emit_json,
    json_option,
    parse_duration,
    parse_when,
    progress,
    record,
    when,
)
from conveyor.errors import ValidationError
from conveyor.models import Job, JobState

STATES = [s.value for s in JobState]


@click.group()
def jobs() -> None:
    """List and inspect jobs."""


@jobs.command("list")
@click.option("--queue", help="Only this queue.")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only this state (repeat)."
)
@click.option("--since", help="Created within this long (15m, 2h, 7d) or since an ISO time.")
@click.option("--search", help="Text in the payload or the id (case-insensitive).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@json_option
@click.pass_obj
@one_line_errors
def list_jobs(
    cli: CliContext,
    queue: str | None,
    states: tuple[str, ...],
    since: str | None,
    search: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Jobs, newest first, live and finished (finished ones created in the last day, unless
    --since reaches further)."""
    found = cli.app().list_jobs(
        queue,
        list(states) or None,
        since=parse_when(since, "--since") if since is not None else None,
        search=search,
        limit=limit,
        offset=offset,
    )
    if as_json:
        emit_json([record(j) for j in found])
        return
    print_jobs(found, "no jobs match")


def print_jobs(found: list[Job], empty: str) -> None:
    """A table of jobs, one per row."""
    console().print(jobs_table(found) if found else empty)


def jobs_table(found: list[Job], *, progress: bool = False) -> Table:
    """The rows of ``print_jobs`` (with ``progress``, a column for each job's progress)."""
    columns = ["id", "queue", "state", "attempt", "priority", "created", "run at / finished"]
    table = Table(*columns, *(["progress"] if progress else []))
    for job in found:
        table.add_row(
            str(job.id),
            job.queue,
            job.state.value,
            f"{job.attempt}/{job.max_attempts}",
            str(job.priority),
            when(job.created_at),
            when(job.finished_at or job.run_at),
            *([progress_text(job)] if progress else []),
        )
    return table


def progress_text(job: Job) -> str:
    """``42% exporting`` from the job's last progress report ('' without one)."""
    if job.progress is None:
        return ""
    message = job.progress.get("message")
    return f"{job.progress.get('percent', 0):g}%" + (f" {message}" if message else "")


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_obj
@one_line_errors
def show(cli: CliContext, job_id: str, as_json: bool) -> None:
    """One job: payload, result, attempts, errors with their tracebacks, progress."""
    job = cli.app().get_job(job_id)
    if as_json:
        emit_json(record(job))
        return
    print_job(job)


def print_job(job: Job) -> None:
    """Every detail of a job, for a person."""
    fields: list[tuple[str, str]] = [
        ("queue", job.queue),
        ("state", job.state.value),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("created", when(job.created_at)),
        ("run at", when(job.run_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
    ]
    optional = {
        "unique key": job.unique_key,
        "singleton key": job.singleton_key,
        "group key": job.group_key,
        "dead letter": job.dead_letter,
        "worker": str(job.worker_id) if job.worker_id else None,
        "depends on": ", ".join(str(d) for d in job.depends_on) or None,
    }
    fields += [(name, value) for name, value in optional.items() if value]
    if job.progress is not None:
        fields.append(("progress", progress_text(job)))
    out = console()
    out.print(f"job {job.id}", style="bold", markup=False)
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        out.print(f"  {name.ljust(width)}  {value}", markup=False)
    out.print("payload:", style="bold")
    out.print(_indented(job.data), markup=False)
    if job.state is JobState.COMPLETED:
        out.print("result:", style="bold")
        out.print(_indented(job.result), markup=False)
    if job.errors:
        out.print(f"errors ({len(job.errors)}):", style="bold")
        for error in job.errors:
            out.print(_error_line(error), markup=False)
            if error.get("traceback"):
                out.print(_indent(str(error["traceback"]).rstrip(), "      "), markup=False)


def _error_line(error: dict[str, Any]) -> str:
    return (
        f"  attempt {error.get('attempt', '?')} at {error.get('at', '?')}: "
        f"{error.get('type', 'Error')}: {error.get('message', '')}"
    )


def _indented(value: Any) -> str:
    return _indent(json.dumps(value, indent=2, ensure_ascii=False, default=str), "  ")


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@jobs.command("watch")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--queue", help="Only this queue (without ID).")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only this state (repeat)."
)
@click.option("--limit", type=int, default=20, show_default=True, help="Rows shown.")
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--count", type=int, help="Stop after this many refreshes (default: until Ctrl-C).")
@click.option("--once", is_flag=True, help="Show one refresh and exit (same as --count 1).")
@json_option
@click.pass_obj
@one_line_errors
def watch(
    cli: CliContext,
    job_id: str | None,
    queue: str | None,
    states: tuple[str, ...],
    limit: int,
    interval: float,
    count: int | None,
    once: bool,
    as_json: bool,
) -> None:
    """A live table of a queue's jobs (or every queue's), or of one job (ID), refreshed until
    Ctrl-C. Off a terminal, or with --json, each refresh is printed below the last."""
    if job_id is not None and (queue is not None or states):
        raise ValidationError("give a job ID or --queue/--state, not both")
    if interval <= 0 or (count is not None and count < 1):
        raise ValidationError("--interval must be > 0 and --count at least 1")
    frames = 1 if once else count
    app = cli.app()
    out = console()

    def snapshot() -> tuple[Any, RenderableType]:
        if job_id is not None:
            job = app.get_job(job_id)
            return record(job), job_panel(job)
        found = app.list_jobs(queue, list(states) or None, limit=limit)
        return [record(j) for j in found], watch_view(app, queue, found)

    live = out.is_terminal and not as_json
    shown = 0
    with Live(console=out, auto_refresh=False) if live else contextlib.nullcontext() as screen:
        while True:
            data, view = snapshot()
            shown += 1
            if as_json:
                emit_json(data)
            elif screen is not None:
                screen.update(view, refresh=True)
            else:
                out.print(view)
            if frames is not None and shown >= frames:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return


def watch_view(app: Conveyor, queue: str | None, found: list[Job]) -> RenderableType:
    """Counts by state above the newest jobs, with the time of the refresh."""
    stats = [s for s in app.queue_stats() if queue is None or s.queue == queue]
    totals = {state: sum(s.counts[state] for s in stats) for state in JobState}
    oldest = max((s.oldest_waiting_seconds or 0 for s in stats), default=0)
    summary = "  ".join(f"{state.value} {n}" for state, n in totals.items())
    title = f"{queue or 'every queue'} at {time.strftime('%H:%M:%S')}: {summary}"
    title += f"  (oldest wait {age(oldest)})"
    body: RenderableType = jobs_table(found, progress=True) if found else Text("no jobs")
    return Group(Text(title, style="bold"), body)


def job_panel(job: Job) -> RenderableType:
    """One job's state, attempt, progress and last error, for ``watch ID``."""
    table = Table.grid(padding=(0, 2))
    table.add_row("job", str(job.id))
    table.add_row("queue", job.queue)
    table.add_row("state", job.state.value)
    table.add_row("attempt", f"{job.attempt} of {job.max_attempts}")
    table.add_row("run at", when(job.run_at))
    table.add_row("started", when(job.started_at))
    table.add_row("finished", when(job.finished_at))
    if job.progress is not None:
        table.add_row("progress", progress_text(job))
    if job.errors:
        table.add_row("last error", _error_line(job.errors[-1]).strip())
    return table


@click.command()
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_obj
@one_line_errors
def retry(cli: CliContext, job_id: str, as_json: bool) -> None:
    """Run a job again now: a queued job is brought forward, a failed or cancelled one is
    queued again with a fresh attempt count."""
    job = cli.app().retry(job_id)
    if as_json:
        emit_json(record(job))
    else:
        click.echo(f"job {job.id} is {job.state.value}, due now")


@click.command()
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_obj
@one_line_errors
def cancel(cli: CliContext, job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job (a running handler is told at once)."""
    job = cli.app().cancel(job_id)
    if as_json:
        emit_json(record(job))
    else:
        click.echo(f"job {job.id} is {job.state.value}")


# What each bulk action is called in its help, its confirmation and its report.
BULK_WORDS = {
    "cancel": ("Cancel", "cancelled"),
    "retry": ("Retry", "queued again"),
    "delete": ("Delete", "deleted"),
    "reprioritize": ("Re-prioritise", "re-prioritised"),
}
BULK_HELP = {
    "cancel": "Cancel every queued, waiting or running job the filter matches (running "
    "handlers are told at once).",
    "retry": "Run again every job the filter matches: queued ones are brought forward, failed "
    "or cancelled ones queued with a fresh attempt count.",
    "delete": "Delete for good every job the filter matches that is not running.",
    "reprioritize": "Give every queued or waiting job the filter matches a new --priority.",
}


def bulk_command(action: str) -> click.Command:
    """``conveyor jobs ACTION``: count what the filter matches, ask (unless --yes), then
    change it in batches with a progress bar."""
    verb, done_word = BULK_WORDS[action]
    choices = [s.value for s in ACTION_STATES[action]]

    @click.pass_obj
    @one_line_errors
    def run(
        cli: CliContext,
        queue: str | None,
        states: tuple[str, ...],
        older_than: str | None,
        search: str | None,
        group_key: str | None,
        dry_run: bool,
        yes: bool,
        batch_size: int,
        as_json: bool,
        priority: int | None = None,
    ) -> None:
        if action == "reprioritize" and priority is None:
            raise ValidationError("--priority is required")
        app = cli.app()
        seconds = None if older_than is None else parse_duration(older_than, "--older-than")
        options: dict[str, Any] = {
            "queue": queue,
            "state": list(states) or None,
            "older_than": seconds,
            "search": search,
            "group_key": group_key,
            "priority": priority,
            "batch_size": batch_size,
        }
        result = app.bulk_jobs(action, **options, dry_run=True)
        if not dry_run and result.matched:
            if not yes and not click.confirm(f"{verb} {result.matched} jobs?", err=True):
                fail("nothing changed", EXIT_CHECK_FAILED)
            total = result.matched
            with progress(f"{verb}: {total} jobs", total=total, as_json=as_json) as advance:
                result = app.bulk_jobs(action, **options, progress=advance)
        elif not dry_run:
            result = replace(result, dry_run=False)
        if as_json:
            emit_json(record(result))
        elif result.dry_run:
            click.echo(f"{result.matched} jobs match (dry run: nothing changed)")
        else:
            click.echo(f"{done_word}: {result.affected} of {result.matched} matching jobs")

    params: list[click.Parameter] = [
        click.Option(["--queue"], help="Only this queue."),
        click.Option(
            ["--state", "states"],
            multiple=True,
            metavar="STATE",
            help=f"Only this state (repeat): {', '.join(choices)} (default: all of them).",
        ),
        click.Option(["--older-than"], help="Only jobs created longer ago (15m, 2h, 7d)."),
        click.Option(["--search"], help="Text in the payload or the id (case-insensitive)."),
        click.Option(["--group-key"], help="Only jobs of this group."),
        click.Option(["--dry-run"], is_flag=True, help="Count the matching jobs; change nothing."),
        click.Option(["--yes"], is_flag=True, help="Do not ask for confirmation."),
        click.Option(
            ["--batch-size"],
            type=int,
            default=1000,
            show_default=True,
            help="Jobs changed per transaction.",
        ),
        click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable output."),
    ]
    if action == "reprioritize":
        params.append(click.Option(["--priority"], type=int, help="The new priority (required)."))
    help_text = (
        f"{BULK_HELP[action]} Give at least one filter. Counts first and asks for confirmation "
        "(declining exits 1) unless --yes."
    )
    return click.Command(action, callback=run, params=params, help=help_text)


for _action in ACTION_STATES:
    jobs.add_command(bulk_command(_action))

COMMANDS: tuple[click.Command, ...] = (jobs, retry, cancel)

"""``conveyor jobs list|show``, ``conveyor retry ID`` and ``conveyor cancel ID``."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from conveyor.cli import CliContext, one_line_errors
from conveyor.cli.common import (
    console,
    emit_json,
    json_option,
    parse_since,
    record,
    when,
)
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
    """Jobs, newest first, live and finished."""
    found = cli.app().list_jobs(
        queue,
        list(states) or None,
        since=parse_since(since) if since is not None else None,
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
    out = console()
    if not found:
        out.print(empty)
        return
    table = Table("id", "queue", "state", "attempt", "priority", "created", "run at / finished")
    for job in found:
        table.add_row(
            str(job.id),
            job.queue,
            job.state.value,
            f"{job.attempt}/{job.max_attempts}",
            str(job.priority),
            when(job.created_at),
            when(job.finished_at or job.run_at),
        )
    out.print(table)


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
        message = job.progress.get("message")
        fields.append(("progress", f"{job.progress.get('percent', 0):g}%" + (
            f" {message}" if message else ""
        )))  # fmt: skip
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


COMMANDS: tuple[click.Command, ...] = (jobs, retry, cancel)

"""``conveyor dead list|retry|purge``: the dead letters (failed jobs)."""

from __future__ import annotations

import click

from conveyor.cli import EXIT_CHECK_FAILED, CliContext, fail, one_line_errors
from conveyor.cli.common import emit_json, json_option, parse_duration, progress, record
from conveyor.cli.jobs import print_jobs
from conveyor.errors import ValidationError


@click.group()
def dead() -> None:
    """The dead letters: jobs whose last attempt failed."""


@dead.command("list")
@click.option("--queue", help="Only this queue.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@json_option
@click.pass_obj
@one_line_errors
def list_dead(cli: CliContext, queue: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Failed jobs, newest first."""
    found = cli.app().list_dead(queue, limit=limit, offset=offset)
    if as_json:
        emit_json([record(j) for j in found])
        return
    print_jobs(found, "no dead letters")


@dead.command("retry")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--queue", help="With --all: the queue whose dead letters to retry.")
@click.option("--all", "every", is_flag=True, help="Every dead letter of --queue.")
@json_option
@click.pass_obj
@one_line_errors
def retry_dead(
    cli: CliContext, job_id: str | None, queue: str | None, every: bool, as_json: bool
) -> None:
    """Queue a dead letter again (ID), or all of a queue's (--queue Q --all), each with a fresh
    attempt count."""
    app = cli.app()
    if job_id is not None:
        if queue is not None or every:
            raise ValidationError("give a job ID or --queue QUEUE --all, not both")
        job = app.retry_dead(job_id)
        if as_json:
            emit_json(record(job))
        else:
            click.echo(f"job {job.id} is {job.state.value}, due now")
        return
    if queue is None or not every:
        raise ValidationError("give a job ID, or --queue QUEUE --all")
    with progress(f"Retrying the dead letters of {queue}", total=None, as_json=as_json):
        count = app.retry_dead_all(queue)
    if as_json:
        emit_json({"retried": count})
    else:
        click.echo(f"queued again: {count} dead letters of {queue}")


@dead.command("purge")
@click.option("--queue", help="Only this queue.")
@click.option("--older-than", help="Only those that failed longer ago (15m, 2h, 7d).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
@one_line_errors
def purge(
    cli: CliContext, queue: str | None, older_than: str | None, yes: bool, as_json: bool
) -> None:
    """Delete dead letters for good (asks first unless --yes; declining exits 1)."""
    seconds = parse_duration(older_than, "--older-than") if older_than is not None else None
    app = cli.app()
    if not yes:
        scope = f"of queue {queue}" if queue else "of every queue"
        age = f" that failed more than {older_than} ago" if older_than else ""
        if not click.confirm(f"Delete the dead letters {scope}{age}?", err=True):
            fail("nothing deleted", EXIT_CHECK_FAILED)
    with progress("Deleting dead letters", total=None, as_json=as_json):
        count = app.purge_dead(queue, older_than=seconds)
    if as_json:
        emit_json({"deleted": count})
    else:
        click.echo(f"deleted: {count} dead letters")


COMMANDS: tuple[click.Command, ...] = (dead,)

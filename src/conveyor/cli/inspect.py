"""``conveyor status``, ``queues``, ``schedules`` and ``workers``: read-only overviews."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.table import Table

from conveyor.cli import CliContext, one_line_errors
from conveyor.cli.common import age, console, emit_json, json_option, now, record, when
from conveyor.cron import next_tick
from conveyor.models import JobState, Schedule, WorkerInfo

STALE_AFTER_HELP = "Seconds without a heartbeat after which a worker counts as dead."


def alive(workers: list[WorkerInfo], stale_after: float) -> list[WorkerInfo]:
    """The workers whose heartbeat is recent enough."""
    return [w for w in workers if w.heartbeat_age < stale_after]


@click.command()
@click.option("--stale-after", type=float, default=30.0, show_default=True, help=STALE_AFTER_HELP)
@json_option
@click.pass_obj
@one_line_errors
def status(cli: CliContext, stale_after: float, as_json: bool) -> None:
    """Every queue's jobs by state and oldest wait, and how many workers are alive."""
    app = cli.app()
    stats = app.queue_stats()
    workers = app.list_workers()
    live = alive(workers, stale_after)
    if as_json:
        emit_json({
            "queues": [
                {
                    "queue": s.queue,
                    "counts": {state.value: n for state, n in s.counts.items()},
                    "oldest_waiting_seconds": s.oldest_waiting_seconds,
                    "paused": s.paused,
                }
                for s in stats
            ],
            "workers": {"alive": len(live), "registered": len(workers)},
        })  # fmt: skip
        return
    out = console()
    if stats:
        table = Table("queue", *(s.value for s in JobState), "oldest wait", "paused")
        for s in stats:
            table.add_row(
                s.queue, *(str(s.counts[state]) for state in JobState),
                age(s.oldest_waiting_seconds), "yes" if s.paused else "",
            )  # fmt: skip
        out.print(table)
    else:
        out.print("no queues")
    out.print(f"workers: {len(live)} alive, {len(workers)} registered")


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Every queue with its policy, limits (blank: the app's default) and whether it is
    paused or fair; ``queues pause|resume NAME`` stops and restarts a queue on every worker,
    ``queues fair NAME [--off]`` makes its claims take turns across the jobs' fair keys."""
    if ctx.invoked_subcommand is None:
        list_queues(ctx.obj, as_json)


@one_line_errors
def list_queues(cli: CliContext, as_json: bool) -> None:
    """The table (or JSON) of ``conveyor queues``."""
    found = cli.app().list_queues()
    if as_json:
        emit_json([record(q) for q in found])
        return
    out = console()
    if not found:
        out.print("no queues")
        return
    table = Table(
        "queue", "policy", "priority", "retry limit", "retry delay", "backoff", "expire in",
        "retention", "dead letter", "concurrency", "rate limit", "paused", "fair",
    )  # fmt: skip
    for q in found:
        rate = f"{q.rate_limit}/{q.rate_interval:g}s" if q.rate_limit is not None else ""
        table.add_row(
            q.name, q.policy.value, _blank(q.priority), _blank(q.retry_limit),
            _blank(q.retry_delay), q.retry_backoff or "", _blank(q.expire_in),
            _blank(q.retention), q.dead_letter or "", _blank(q.concurrency), rate,
            "yes" if q.paused else "", "yes" if q.fair else "",
        )  # fmt: skip
    out.print(table)


@queues.command("pause")
@click.argument("name")
@json_option
@click.pass_obj
@one_line_errors
def pause(cli: CliContext, name: str, as_json: bool) -> None:
    """Stop starting the jobs of queue NAME on every worker (sends are still accepted; running
    jobs finish). Holds across restarts until ``queues resume``."""
    queue = cli.app().pause_queue(name)
    if as_json:
        emit_json({"queue": queue.name, "paused": queue.paused})
    else:
        click.echo(f"queue {queue.name} is paused")


@queues.command("resume")
@click.argument("name")
@json_option
@click.pass_obj
@one_line_errors
def resume(cli: CliContext, name: str, as_json: bool) -> None:
    """Start running the jobs of queue NAME again (idle workers are woken at once)."""
    queue = cli.app().resume_queue(name)
    if as_json:
        emit_json({"queue": queue.name, "paused": queue.paused})
    else:
        click.echo(f"queue {queue.name} is running")


@queues.command("fair")
@click.argument("name")
@click.option("--off", is_flag=True, help="Claim in one order again (priority, then run time).")
@json_option
@click.pass_obj
@one_line_errors
def fair(cli: CliContext, name: str, off: bool, as_json: bool) -> None:
    """Make queue NAME fair: each fetch takes the head job of each fair key in turn (jobs sent
    with --fair-key; those without share one key), so one key's flood cannot hold back
    another's jobs. The queue must exist."""
    queue = cli.app().update_queue(name, fair=not off)
    if as_json:
        emit_json({"queue": queue.name, "fair": queue.fair})
    else:
        click.echo(f"queue {queue.name} is {'fair' if queue.fair else 'not fair'}")


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def next_run(schedule: Schedule, at: datetime) -> datetime | None:
    """When the schedule fires next (None while it is disabled)."""
    if not schedule.enabled:
        return None
    return next_tick(
        cron=schedule.cron, every=schedule.every, tz=schedule.tz, anchor=schedule.created_at,
        now=max(at, schedule.last_tick or at),
    )  # fmt: skip


@click.command()
@json_option
@click.pass_obj
@one_line_errors
def schedules(cli: CliContext, as_json: bool) -> None:
    """Every schedule, with its last and next run."""
    app = cli.app()
    found = app.list_schedules()
    at = now(app)
    if as_json:
        emit_json([{**record(s), "next_run": next_run(s, at)} for s in found])
        return
    out = console()
    if not found:
        out.print("no schedules")
        return
    table = Table("name", "when", "tz", "queue", "enabled", "last run", "next run")
    for s in found:
        rule = s.cron if s.cron is not None else f"every {s.every:g}s"
        table.add_row(
            s.name, rule, s.tz, s.queue, "yes" if s.enabled else "no", when(s.last_tick),
            when(next_run(s, at)),
        )  # fmt: skip
    out.print(table)


@click.command()
@click.option("--stale-after", type=float, default=30.0, show_default=True, help=STALE_AFTER_HELP)
@json_option
@click.pass_obj
@one_line_errors
def workers(cli: CliContext, stale_after: float, as_json: bool) -> None:
    """The registered workers and the age of their last heartbeat."""
    found = cli.app().list_workers()
    if as_json:
        emit_json([_worker(w, stale_after) for w in found])
        return
    out = console()
    if not found:
        out.print("no workers")
        return
    table = Table("id", "host", "pid", "queues", "concurrency", "started", "heartbeat", "alive")
    for w in found:
        table.add_row(
            str(w.id), w.hostname, str(w.pid), ", ".join(w.queues), str(w.concurrency),
            when(w.started_at), f"{age(w.heartbeat_age)} ago",
            "yes" if w.heartbeat_age < stale_after else "no",
        )  # fmt: skip
    out.print(table)


def _worker(w: WorkerInfo, stale_after: float) -> dict[str, Any]:
    return {**record(w), "heartbeat_age": w.heartbeat_age, "alive": w.heartbeat_age < stale_after}


COMMANDS: tuple[click.Command, ...] = (status, queues, schedules, workers)

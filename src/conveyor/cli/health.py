"""``conveyor health``: a probe for load balancers, orchestrators and cron checks.

Exit codes: 0 healthy, 1 unhealthy (schema not current, too few workers, a queue waiting too
long), 3 database unreachable.
"""

from __future__ import annotations

import sys

import click
from rich.table import Table

from conveyor.cli import EXIT_CHECK_FAILED, EXIT_DATABASE, CliContext, one_line_errors
from conveyor.cli.common import console, emit_json, json_option, record


@click.command()
@click.option(
    "--max-wait", type=float, metavar="SECONDS",
    help="Unhealthy when a queue's oldest runnable job has waited longer than this.",
)  # fmt: skip
@click.option(
    "--min-workers", type=int, default=0, show_default=True,
    help="Unhealthy with fewer live workers than this.",
)  # fmt: skip
@click.option(
    "--stale-after", type=float, default=30.0, show_default=True,
    help="Seconds without heartbeat after which a worker is not counted as live.",
)  # fmt: skip
@json_option
@click.pass_obj
@one_line_errors
def health(
    cli: CliContext, max_wait: float | None, min_workers: int, stale_after: float, as_json: bool
) -> None:
    """Check the database, schema, workers and queues (exit 0 healthy, 1 unhealthy, 3 the
    database is unreachable)."""
    report = cli.app().health(max_wait=max_wait, min_workers=min_workers, stale_after=stale_after)
    if as_json:
        emit_json(record(report))
    else:
        out = console()
        out.print("healthy" if report.ok else "unhealthy")
        if report.database:
            out.print(
                f"schema {'current' if report.schema_current else 'not current'}, "
                f"{report.workers} live worker(s)"
            )
        if report.queues:
            table = Table("queue", "depth", "oldest wait (s)", "paused")
            for q in report.queues:
                wait = q.oldest_waiting_seconds
                table.add_row(
                    q.queue, str(q.depth), "-" if wait is None else f"{wait:.1f}",
                    "yes" if q.paused else "",
                )  # fmt: skip
            out.print(table)
        for problem in report.problems:
            out.print(f"problem: {problem}", markup=False)
    if not report.database:
        sys.exit(EXIT_DATABASE)
    if not report.ok:
        sys.exit(EXIT_CHECK_FAILED)

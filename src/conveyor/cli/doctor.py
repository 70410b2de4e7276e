"""``conveyor doctor``: schema drift, bloat, transactions holding back vacuum, stuck jobs, silent
workers and LISTEN/NOTIFY, each finding with a one-line fix. Exit 1 when any is an error."""

from __future__ import annotations

import sys

import click
from rich.table import Table
from rich.text import Text

from conveyor.cli import EXIT_CHECK_FAILED, CliContext, one_line_errors
from conveyor.cli.common import console, emit_json, json_option, record

STYLES = {"ok": "green", "warning": "yellow", "error": "bold red"}


@click.command()
@click.option(
    "--stale-after", type=float, default=30.0, show_default=True,
    help="Seconds without heartbeat after which a worker counts as silent.",
)  # fmt: skip
@json_option
@click.pass_obj
@one_line_errors
def doctor(cli: CliContext, stale_after: float, as_json: bool) -> None:
    """Diagnose the schema, tables, transactions, jobs, workers and notifications (exit 1 when
    any finding is an error)."""
    findings = cli.app().diagnose(stale_after=stale_after)
    if as_json:
        emit_json([record(f) for f in findings])
    else:
        table = Table("severity", "check", "finding", "fix")
        for f in findings:
            # Text, not markup: a message may hold brackets, such as a list of versions.
            table.add_row(
                Text(f.severity, style=STYLES.get(f.severity, "")), f.check, Text(f.message),
                Text(f.fix),
            )  # fmt: skip
        console().print(table)
    if any(f.severity == "error" for f in findings):
        sys.exit(EXIT_CHECK_FAILED)

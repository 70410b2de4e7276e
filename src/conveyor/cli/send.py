"""``conveyor send QUEUE [DATA]``: enqueue one job from a shell, a script or a cron line.

DATA is JSON, given as an argument or on stdin (``-``, or nothing with stdin not a terminal).
Each option is one of ``send()``'s, spelled with dashes; the library validates them, so a bad one
is the same typed error (and exit code 2) as in Python.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from conveyor.cli import CliContext, one_line_errors
from conveyor.cli.common import emit_json, json_option, parse_duration, parse_when
from conveyor.errors import PayloadError

DURATION_HELP = "Seconds, or a duration like 90s, 15m, 2h, 7d."


def read_data(text: str | None) -> Any:
    """The job's payload: ``text`` as JSON, or stdin's when ``text`` is ``-`` or absent and
    stdin is not a terminal; ``None`` when there is none."""
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            return None
        text = sys.stdin.read()
        if not text.strip():
            return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"DATA must be JSON: {exc}") from None


def seconds(text: str | None, name: str) -> float | None:
    """A duration option in seconds (None when not given)."""
    return None if text is None else parse_duration(text, name)


@click.command(
    epilog="""\b
Examples:
  conveyor send email.send '{"to": "ada@example.com"}' --priority 5
  echo '{"report": 7}' | conveyor send reports.export --start-after 10m --retry-limit 3
  conveyor send nightly.cleanup --unique-key cleanup --json""",
)
@click.argument("queue")
@click.argument("data", required=False)
@click.option("--priority", type=int, help="Higher runs first (default: the queue's, else 0).")
@click.option(
    "--start-after", metavar="WHEN",
    help="Run no sooner than this: a delay (90s, 15m, 2h) or an ISO time (UTC unless it says).",
)  # fmt: skip
@click.option("--retry-limit", type=int, help="Retries after the first attempt.")
@click.option("--retry-delay", metavar="DURATION", help="Delay before a retry. " + DURATION_HELP)
@click.option("--retry-backoff", help="fixed, linear or exponential.")
@click.option("--retry-delay-max", metavar="DURATION", help="Cap of the backoff. " + DURATION_HELP)
@click.option("--expire-in", metavar="DURATION", help="Run time limit. " + DURATION_HELP)
@click.option("--retention", metavar="DURATION", help="How long the finished job is kept.")
@click.option("--unique-key", help="Dedupe while a job with this key is queued or running.")
@click.option(
    "--unique-mode", type=click.Choice(["keep", "replace"]),
    help="With --unique-key: keep the queued job, or replace its payload.",
)  # fmt: skip
@click.option(
    "--debounce", metavar="DURATION", help="With --unique-key: run this long after the last send."
)
@click.option("--singleton-key", help="Throttle key (with --singleton-seconds).")
@click.option("--singleton-seconds", type=int, help="At most one job per key in this window.")
@click.option("--group-key", help="Jobs of one group key run one at a time.")
@click.option("--fair-key", help="The key a fair queue takes turns by (a tenant, a customer).")
@click.option("--dead-letter", metavar="QUEUE", help="Queue receiving the job if it dies.")
@click.option("--on-complete", metavar="QUEUE", help="Queue receiving the job's outcome.")
@click.option(
    "--depends-on", "depends_on", multiple=True, metavar="ID",
    help="Run only after this job completed (repeat).",
)  # fmt: skip
@json_option
@click.pass_obj
@one_line_errors
def send(
    cli: CliContext,
    /,
    queue: str,
    data: str | None,
    as_json: bool,
    start_after: str | None,
    retry_delay: str | None,
    retry_delay_max: str | None,
    expire_in: str | None,
    retention: str | None,
    debounce: str | None,
    depends_on: tuple[str, ...],
    **given: Any,
) -> None:
    """Enqueue a job on QUEUE with DATA (JSON, from the argument or stdin); print its id."""
    options: dict[str, Any] = {
        **{name: value for name, value in given.items() if value is not None},
        "start_after": None if start_after is None else parse_when(start_after, "--start-after"),
        "retry_delay": seconds(retry_delay, "--retry-delay"),
        "retry_delay_max": seconds(retry_delay_max, "--retry-delay-max"),
        "expire_in": seconds(expire_in, "--expire-in"),
        "retention": seconds(retention, "--retention"),
        "debounce_seconds": seconds(debounce, "--debounce"),
        "depends_on": list(depends_on) or None,
    }
    payload = read_data(data)
    job_id = cli.app().send(
        queue, payload, **{name: value for name, value in options.items() if value is not None}
    )
    if as_json:
        emit_json({"id": job_id, "queue": queue})
    else:
        click.echo(f"job {job_id} sent to {queue}")


COMMANDS: tuple[click.Command, ...] = (send,)

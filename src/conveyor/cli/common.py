"""What the operator commands share: ``--json`` output, rich tables, and time arguments."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import UUID

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from conveyor.app import Conveyor
from conveyor.errors import InvalidOption

F = TypeVar("F", bound=Callable[..., Any])

DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Piped output has no terminal width; a wide table beats one whose ids wrap.
PIPE_WIDTH = 200


def json_option(func: F) -> F:
    """The ``--json`` flag every operator command takes."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def console() -> Console:
    """A rich console on the current stdout."""
    return Console(
        width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False, soft_wrap=True
    )


@contextlib.contextmanager
def progress(
    description: str, *, total: int | None, as_json: bool
) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr while one long operation runs: a pulse, or the count it
    reports through the function yielded (how many of ``total`` are done); full once it
    returns. Off when the output is not a terminal or with ``--json``, so scripts and logs get
    only the result."""
    if as_json or not (sys.stdout.isatty() and sys.stderr.isatty()):
        yield lambda done: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total or None)
        yield lambda done: bar.update(task, completed=done)
        bar.update(task, completed=total or 1, total=total or 1)


def _default(value: object) -> object:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def record(value: Any) -> dict[str, Any]:
    """A dataclass as a dict of its public fields."""
    return {
        f.name: getattr(value, f.name)
        for f in dataclasses.fields(value)
        if not f.name.startswith("_")
    }


def emit_json(value: object) -> None:
    """Print ``value`` as one line of JSON (ids and times as strings)."""
    click.echo(json.dumps(value, default=_default, ensure_ascii=False))


def parse_duration(text: str, name: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidOption(f"{name} must be a duration like 90s, 15m, 2h or 7d, got {text!r}")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def parse_when(text: str, name: str) -> datetime | float:
    """A duration (``--since``: before now; ``--start-after``: from now) or an ISO date/time
    (UTC unless it says otherwise)."""
    if DURATION.fullmatch(text.strip()):
        return parse_duration(text, name)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidOption(
            f"{name} must be a duration like 15m or 2h, or an ISO time, got {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def now(app: Conveyor) -> datetime:
    """The app's time: its clock if it has one, else this host's."""
    return app.settings.clock() or datetime.now(UTC)


def age(seconds: float | None) -> str:
    """A short human duration: ``42s``, ``3m 05s``, ``2h 10m``, ``4d 3h``."""
    if seconds is None:
        return "-"
    whole = int(max(seconds, 0))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3600}h"


def when(value: datetime | None) -> str:
    """A timestamp for a table, in UTC to the second."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

"""The ``conveyor`` command line.

Exit codes: 0 success; 1 a check failed (``migrate --check`` found pending migrations) or a
confirmation was declined; 2 bad usage or input; 3 the database could not be reached or refused
the operation; 4 no such job, queue or schedule; 5 the job's state does not allow the action
(retrying a completed job, deleting a running one). Errors are one line on stderr.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from conveyor.app import Conveyor
from conveyor.cli.common import progress
from conveyor.config import DEFAULT_SCHEMA
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    DatabaseUnavailable,
    JobStateError,
    NotFound,
    ValidationError,
)
from conveyor.worker.logs import FORMATS, LEVELS, configure_logging
from conveyor.worker.processes import supervise

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_NOT_FOUND = 4
EXIT_STATE = 5

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print one line to stderr and exit with ``code``."""
    click.echo(f"conveyor: error: {message}", err=True)
    sys.exit(code)


def one_line_errors(func: F) -> F:
    """Turn Conveyor and database errors into a one-line message and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ValidationError, ConfigurationError) as exc:
            fail(str(exc), EXIT_USAGE)
        except DatabaseUnavailable as exc:
            fail(str(exc).strip().splitlines()[0], EXIT_DATABASE)
        except NotFound as exc:
            fail(str(exc), EXIT_NOT_FOUND)
        except JobStateError as exc:
            fail(str(exc), EXIT_STATE)
        except ConveyorError as exc:
            fail(str(exc), EXIT_DATABASE)

    return wrapper  # type: ignore[return-value]


def load_app(spec: str) -> Conveyor:
    """Import ``module:attribute`` and return the :class:`Conveyor` it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app must look like module:attribute, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Conveyor):
        raise ConfigurationError(f"{spec!r} is not a Conveyor app")
    return app


class CliContext:
    """The global options; the app is built on first use, so ``--help`` needs no database.

    ``--dsn`` and ``--schema`` apply to every command: to an app loaded by ``--app`` or by
    ``worker APP`` too, whose own DSN and schema they replace when given on the command line.
    (CONVEYOR_DATABASE_URL only fills in a DSN the app leaves unset, as it does for any app, so
    an app that names its own database keeps it.) A command that cannot honour them refuses
    them (:meth:`refuse_database`).
    """

    def __init__(
        self,
        dsn: str | None,
        schema: str,
        app_spec: str | None,
        *,
        dsn_given: bool = False,
        schema_given: bool = False,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.dsn_given = dsn_given
        self.schema_given = schema_given
        self.app_spec = app_spec
        self._app: Conveyor | None = None

    def app(self, spec: str | None = None) -> Conveyor:
        """The app named by ``spec`` or ``--app``, else one built from ``--dsn``/``--schema``."""
        if self._app is None:
            spec = spec or self.app_spec
            if spec:
                app = load_app(spec)
                if self.dsn_given or self.schema_given:
                    app.use_database(
                        self.dsn if self.dsn_given else None,
                        self.schema if self.schema_given else None,
                    )
                self._app = app
            else:
                self._app = Conveyor(self.dsn, schema=self.schema)
        return self._app

    def refuse_database(self, command: str, why: str) -> None:
        """Refuse a ``--dsn`` given on the command line to a command that cannot use it."""
        if self.dsn_given:
            raise ValidationError(f"--dsn does not apply to `conveyor {command}`: {why}")

    def close(self) -> None:
        """Close the app's pools."""
        if self._app is not None:
            self._app.close()


@click.group()
@click.version_option(package_name="conveyor", prog_name="conveyor", message="%(prog)s %(version)s")
@click.option(
    "--dsn", envvar="CONVEYOR_DATABASE_URL", metavar="URL",
    help="PostgreSQL URL, e.g. postgresql://user@host/db (default: $CONVEYOR_DATABASE_URL, "
    "else $DATABASE_URL).",
)  # fmt: skip
@click.option(
    "--schema", envvar="CONVEYOR_SCHEMA", default=DEFAULT_SCHEMA, show_default=True,
    help="Schema holding Conveyor's tables.",
)  # fmt: skip
@click.option(
    "--app", "app_spec", metavar="MODULE:ATTR",
    help="Take DSN and schema from an app (--dsn and --schema, when given, replace them).",
)  # fmt: skip
@click.pass_context
def main(ctx: click.Context, dsn: str | None, schema: str, app_spec: str | None) -> None:
    """Conveyor: durable background jobs in PostgreSQL."""
    given = {
        f"{name}_given": ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        for name in ("dsn", "schema")
    }
    ctx.obj = CliContext(dsn, schema, app_spec, **given)
    ctx.call_on_close(ctx.obj.close)


@main.command()
@click.option(
    "--sql", "print_sql", is_flag=True, help="Print the pending SQL instead of running it."
)
@click.option("--check", is_flag=True, help="Exit 1 if migrations are pending; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@one_line_errors
def migrate(cli: CliContext, print_sql: bool, check: bool, as_json: bool) -> None:
    """Bring the database schema up to date (safe to run from many processes at once)."""
    app = cli.app()
    if print_sql:
        click.echo(app.migration_sql(), nl=False)
        return
    if check:
        status = app.migration_status()
        pending = [f"{m.version:04d}_{m.name}" for m in status.pending]
        if as_json:
            report = {"current": status.current, "pending": pending, "unknown": status.unknown}
            click.echo(json.dumps(report))
        elif pending:
            click.echo(f"pending migrations: {', '.join(pending)}")
        elif status.unknown:
            click.echo(f"database has migrations this release does not know: {status.unknown}")
        else:
            click.echo(f"schema {app.schema!r} is up to date")
        if not status.current:
            sys.exit(EXIT_CHECK_FAILED)
        return
    todo = len(app.migration_status().pending)
    with progress(f"Applying {todo} migrations to {app.schema!r}", total=todo, as_json=as_json):
        applied = app.migrate()
    if as_json:
        click.echo(json.dumps({"applied": applied}))
    elif applied:
        click.echo(f"applied: {', '.join(applied)}")
    else:
        click.echo(f"schema {app.schema!r} is up to date")


@main.command("worker")
@click.argument("app_spec", metavar="APP")
@click.option("--queues", help="Comma-separated queues to serve (default: every handler's).")
@click.option("--concurrency", type=int, default=10, show_default=True, help="Jobs at once.")
@click.option(
    "--prefetch",
    type=int,
    help="Jobs claimed ahead of free slots (default: adaptive, at most 400).",
)
@click.option("--processes", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--shutdown-timeout", type=float, default=30.0, show_default=True)
@click.option("--burst", is_flag=True, help="Run the jobs due now, then exit.")
@click.option("--migrate", is_flag=True, help="Apply pending migrations before starting.")
@click.option(
    "--stale-after",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds without heartbeat before a worker's jobs are recovered.",
)
@click.option(
    "--heartbeat-interval", type=float, default=None,
    help="Seconds between heartbeats (default: a third of --stale-after, at most 5).",
)  # fmt: skip
@click.option(
    "--poll-interval",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between polls when no NOTIFY arrives.",
)
@click.option("--recover-interval", type=float, default=5.0, show_default=True)
@click.option(
    "--log-level", envvar="CONVEYOR_LOG_LEVEL", default="INFO", show_default=True,
    type=click.Choice(LEVELS, case_sensitive=False), help="Lowest level of the lines written.",
)  # fmt: skip
@click.option(
    "--log-format", envvar="CONVEYOR_LOG_FORMAT", default="logfmt", show_default=True,
    type=click.Choice(FORMATS),
    help="Log lines as key=value pairs (logfmt) or JSON objects, one per line, on stderr.",
)  # fmt: skip
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.pass_obj
@one_line_errors
def worker(
    cli: CliContext,
    app_spec: str,
    queues: str | None,
    concurrency: int,
    prefetch: int | None,
    processes: int,
    shutdown_timeout: float,
    burst: bool,
    migrate: bool,
    stale_after: float,
    heartbeat_interval: float | None,
    poll_interval: float,
    recover_interval: float,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run the jobs of APP (module:attribute) until SIGTERM or SIGINT."""
    configure_logging(log_level, log_format)
    if processes < 1:
        raise ValidationError("--processes must be at least 1")
    if processes > 1 and metrics_port is not None:
        raise ValidationError("--metrics-port serves one process: use it with --processes 1")
    if processes > 1:
        # Each child is this same command line with one process.
        command = [sys.executable, "-m", "conveyor.cli", *sys.argv[1:]]
        sys.exit(supervise(_without_option(command, "--processes"), processes))
    app = cli.app(app_spec)
    served = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if metrics_port is not None:
        serve_metrics(app, metrics_host, metrics_port, stale_after)
    app.run_worker(
        served,
        concurrency,
        prefetch=prefetch,
        shutdown_timeout=shutdown_timeout,
        burst=burst,
        migrate=migrate,
        stale_after=stale_after,
        heartbeat_interval=heartbeat_interval,
        poll_interval=poll_interval,
        recover_interval=recover_interval,
    )


def serve_metrics(app: Conveyor, host: str, port: int, stale_after: float) -> None:
    """Count the app's events and serve them at ``http://host:port/metrics`` from a thread."""
    from prometheus_client import start_http_server

    from conveyor.metrics import Metrics

    metrics = Metrics(app, stale_after=stale_after)
    metrics.install()
    try:
        start_http_server(port, host, registry=metrics.registry)
    except OSError as exc:
        raise ValidationError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None


def _without_option(command: list[str], name: str) -> list[str]:
    """``command`` without ``name VALUE`` or ``name=VALUE``."""
    out: list[str] = []
    skip = False
    for part in command:
        if skip:
            skip = False
        elif part == name:
            skip = True
        elif not part.startswith(name + "="):
            out.append(part)
    return out


# Commands kept in modules of their own import this one, so they are registered last.
from conveyor.cli.doctor import doctor  # noqa: E402
from conveyor.cli.health import health  # noqa: E402

main.add_command(health)
main.add_command(doctor)

from conveyor.cli import dashboard, dead, inspect, jobs, send  # noqa: E402

for _command in (
    *inspect.COMMANDS,
    *jobs.COMMANDS,
    *dead.COMMANDS,
    *dashboard.COMMANDS,
    *send.COMMANDS,
):
    main.add_command(_command)

from conveyor.cli.demo import demo  # noqa: E402
from conveyor.cli.dev import dev  # noqa: E402

main.add_command(dev)
main.add_command(demo)

from conveyor.cli.examples import attach  # noqa: E402

attach(main)

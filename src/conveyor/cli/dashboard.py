"""``conveyor dashboard``: the web dashboard and admin API, served standalone."""

from __future__ import annotations

import click

from conveyor.cli import EXIT_USAGE, CliContext, fail, one_line_errors


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--token", envvar="CONVEYOR_DASHBOARD_TOKEN",
    help="Access token (else CONVEYOR_DASHBOARD_TOKEN; else one is made and printed).",
)  # fmt: skip
@click.pass_obj
@one_line_errors
def dashboard(cli: CliContext, host: str, port: int, token: str | None) -> None:
    """Serve the web dashboard and the admin HTTP API until interrupted."""
    try:
        from conveyor.web import serve
    except ImportError as exc:
        fail(f"the dashboard needs the web extra (pip install 'conveyor[web]'): {exc}", EXIT_USAGE)
    serve(cli.app(), host=host, port=port, token=token)


COMMANDS: tuple[click.Command, ...] = (dashboard,)

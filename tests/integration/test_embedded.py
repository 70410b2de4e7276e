"""The embedded PostgreSQL: the fallback of the test suite, and the base of `conveyor dev`."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from conveyor import Conveyor
from conveyor.embedded import embedded_postgres
from conveyor.errors import ConfigurationError


def test_embedded_server_runs_conveyor(tmp_path: Path) -> None:
    with embedded_postgres(tmp_path / "pg") as dsn:
        with Conveyor(dsn, schema="embedded") as app:
            app.migrate()
            job_id = app.send("q", {"ok": True})
            assert app.get_job(job_id).data == {"ok": True}
        with psycopg.connect(dsn, autocommit=True) as listener:
            listener.execute('LISTEN "conveyor:embedded"')
            with Conveyor(dsn, schema="embedded") as app:
                # On a connection of its own: a pooled send notifies only an idle worker.
                app.send("wake", {}, connection=listener)
            note = next(listener.notifies(timeout=5))
            assert (note.channel, note.payload) == ("conveyor:embedded", "wake")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)  # stopped on exit


def test_data_dir_with_spaces_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError), embedded_postgres(tmp_path / "has space"):
        pass

"""Where a connection string points, to say so in logs without its credentials."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import ProgrammingError


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL or key=value string, with libpq's environment
    and defaults filling what it leaves out; never its user or password."""
    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        return "(unparsable connection string)"
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or "")
    return f"{host}:{port}/{dbname}"

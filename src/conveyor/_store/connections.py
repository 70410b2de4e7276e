"""What the sync and async stores share about connections: checking a connection string before
anything connects, connection arguments that fail fast, telling a pooled connection the server
already closed from a live one, and turning a connection failure into one line with its cause.
"""

from __future__ import annotations

import logging
import re
import select
import weakref
from collections import deque
from typing import Any, TypeVar
from urllib.parse import urlsplit

from psycopg import AsyncConnection, Connection, Error, postgres
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg.types.json import JsonbBinaryLoader, JsonBinaryLoader, JsonbLoader, JsonLoader

from conveyor.errors import ConfigurationError, DatabaseUnavailable

# Seconds libpq may take to open a connection when the DSN does not say (libpq waits for the TCP
# handshake to give up otherwise, minutes on a host that drops packets).
DEFAULT_CONNECT_TIMEOUT = 5
POSTGRES_SCHEMES = ("postgresql", "postgres")
PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
# A send_batch of bare jobs this large or larger is copied in (job_copy_in) rather than inserted:
# a statement and a COPY in a transaction where the insert is one statement, which pays from
# about here (bench/RESULTS.md).
COPY_MIN = 1000
# The types of job_copy_in's columns, in its order.
COPY_TYPES = (
    "uuid", "text", "text", "jsonb", "int4", "timestamptz", "int4", "int4", "float8", "text",
    "float8", "float8", "float8", "text", "timestamptz", "text",
)  # fmt: skip
# Connections the stores found closed by the server and handed back to be replaced: expected
# after a restart, so the pool's warning about each is not for the operator.
_replaced: weakref.WeakSet[Any] = weakref.WeakSet()


def check_dsn(dsn: str) -> str:
    """``dsn`` if libpq can read it as a PostgreSQL connection string, else a
    :class:`~conveyor.errors.ConfigurationError` naming what is wrong (never the password)."""
    if "://" in dsn:
        scheme = urlsplit(dsn).scheme.lower()
        if scheme not in POSTGRES_SCHEMES:
            raise ConfigurationError(
                f"not a PostgreSQL connection string: the URL scheme is {scheme!r} "
                "(expected postgresql:// or postgres://)"
            )
    try:
        conninfo_to_dict(dsn)
    except Error as exc:
        words = PASSWORD.sub(r"\1***", one_line(str(exc)))
        raise ConfigurationError(f"invalid PostgreSQL connection string: {words}") from None
    return dsn


UTC_SESSION = "SET TimeZone TO 'UTC'"

_T = TypeVar("_T")


class _NewestFirst(deque[_T]):
    """The idle connections of a pool, handed out newest first: psycopg_pool takes them with
    ``popleft`` and returns them with ``append``, so overriding ``popleft`` makes it a stack."""

    def popleft(self) -> _T:
        return self.pop()


def newest_first(pool: Any) -> None:
    """Make ``pool`` (sync or async, psycopg_pool 3.2+) hand out the connection returned last.

    psycopg_pool cycles through its idle connections in turn. Once a burst has opened a second
    one, calls one after another alternate between two server backends, and each costs more
    (why, not found): about 40 us more per send of one job, 3,500 against 4,300 sends/s
    (measured on one machine in one run). Reusing the newest keeps one backend busy and lets
    the others sit idle until the pool's ``max_idle`` closes them. (The pool also takes the
    connection it shrinks by with ``popleft``: it then closes the newest idle one, which
    changes which connection closes, not how many.)
    """
    pool._pool = _NewestFirst(pool._pool)


def connect_kwargs(dsn: str, **kwargs: Any) -> dict[str, Any]:
    """Connection arguments with a bounded ``connect_timeout`` unless the DSN sets one."""
    if "connect_timeout" not in conninfo_to_dict(dsn):
        kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return kwargs


async def utc_session_async(conn: AsyncConnection[Any]) -> None:
    """Put a new pooled connection's session in UTC.

    psycopg turns a ``timestamptz`` into a datetime much faster in a UTC session than in any
    named zone (even 'Etc/UTC'): about 2 us per value, three per claimed job. The instants are
    the same; only the datetimes' tzinfo is UTC.
    """
    await conn.execute(UTC_SESSION)


def utc_session(conn: Connection[Any]) -> None:
    """The sync twin of :func:`utc_session_async`."""
    conn.execute(UTC_SESSION)


def closed_by_server(conn: Any) -> bool:
    """Whether an idle connection was already closed by the server (restart, failover,
    ``pg_terminate_backend``, idle timeout), found without a round trip.

    An idle connection has nothing to read: the server writes to it only to say goodbye (the
    FATAL before it closes) or, more rarely, a notice. Either way, input pending means this
    connection is not trusted with a statement that might not be repeatable.
    """
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.pgconn.socket
    except Error:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def replaced(conn: Any) -> None:
    """Mark a connection found closed by the server, before it goes back to be replaced."""
    _replaced.add(conn)


class _QuietReplacements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        ours = bool(args) and args[0] in _replaced
        return not (ours and str(record.msg).startswith("discarding closed connection"))


logging.getLogger("psycopg.pool").addFilter(_QuietReplacements())


def one_line(text: str) -> str:
    """libpq's multi-line messages (a hint on an indented line) as one line."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """The error of a connection that could not be made, in the server's or libpq's words."""
    return DatabaseUnavailable(f"database unavailable: {one_line(str(exc))}")


def standard_json(adapters: AdaptersMap) -> None:
    """Load ``json`` and ``jsonb`` as Python values through ``adapters`` (a cursor's). A
    caller's connection may load them its own way (Django's loads ``jsonb`` as text, for its
    JSONField to decode); what Conveyor reads on it must come back as on its own connections,
    and the caller's connection keeps its loaders."""
    for name, loaders in (
        ("json", (JsonLoader, JsonBinaryLoader)),
        ("jsonb", (JsonbLoader, JsonbBinaryLoader)),
    ):
        for loader in loaders:
            adapters.register_loader(name, loader)


class _JsonbText(Dumper):
    """Dumps JSON already encoded (a job's data) as binary ``jsonb``: its version byte, then the
    text. psycopg's own dumper would encode the text again, as a JSON string."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + str(obj).encode()


def copy_jsonb_text(adapters: AdaptersMap) -> None:
    """Make ``jsonb`` columns of a binary COPY, typed by ``set_types``, take JSON text, through
    ``adapters`` (a cursor's: the connection's own stay as they are)."""
    adapters.register_dumper(None, _JsonbText)

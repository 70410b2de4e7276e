"""Turn database errors into Conveyor's typed errors, in one place for the sync and async stores."""

from __future__ import annotations

from typing import NoReturn

from psycopg import Error
from psycopg import errors as pg

from conveyor._store.connections import unavailable
from conveyor.errors import (
    ConveyorError,
    DuplicateJob,
    InvalidOption,
    JobNotFound,
    SchemaOutOfDate,
)

# The messages of a missing schema object, as opposed to a mistake inside a statement.
MISSING_OBJECT = ("relation ", "function ", "schema ")


def translated(exc: Error, schema: str) -> ConveyorError | None:
    """Our error for a database error that stems from bad input or a missing schema, else None."""
    message = str(exc.diag.message_primary or exc)
    if isinstance(exc, pg.OperationalError | pg.InterfaceError) and not isinstance(
        exc, pg.QueryCanceled
    ):
        return unavailable(exc)
    if isinstance(exc, pg.UndefinedTable | pg.UndefinedFunction | pg.InvalidSchemaName):
        if message.startswith(MISSING_OBJECT):
            return SchemaOutOfDate(
                f"schema {schema!r} is not migrated ({message}): "
                "run `conveyor migrate` or app.migrate()"
            )
    elif isinstance(exc, pg.UniqueViolation):
        return DuplicateJob(
            f"another queued or running job holds this unique_key ({exc.diag.message_detail})"
        )
    elif isinstance(exc, pg.ForeignKeyViolation):
        return JobNotFound(message)  # link_jobs: a dependency that does not exist
    elif isinstance(exc, pg.CheckViolation | pg.InvalidParameterValue | pg.NumericValueOutOfRange):
        return InvalidOption(message)
    return None


def reraise(exc: Error, schema: str) -> NoReturn:
    """Raise Conveyor's error for a database error (from an ``except`` block), or the error
    itself where it has none."""
    ours = translated(exc, schema)
    if ours is None:
        raise exc
    raise ours from exc

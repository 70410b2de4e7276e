"""Turn database errors into Conveyor's typed errors, in one place for the sync and async stores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import errors as pg

from conveyor.errors import DuplicateJob, InvalidOption, SchemaOutOfDate


# The messages of a missing schema object, as opposed to a mistake inside a statement.
MISSING_OBJECT = ("relation ", "function ", "schema ")


@contextmanager
def translated(schema: str) -> Iterator[None]:
    """Re-raise the database errors that stem from bad input or a missing schema as ours."""
    try:
        yield
    except (pg.UndefinedTable, pg.UndefinedFunction, pg.InvalidSchemaName) as exc:
        if not str(exc.diag.message_primary).startswith(MISSING_OBJECT):
            raise
        raise SchemaOutOfDate(
            f"schema {schema!r} is not migrated ({exc.diag.message_primary}): "
            "run `conveyor migrate` or app.migrate()"
        ) from exc
    except pg.UniqueViolation as exc:
        raise DuplicateJob(
            f"another queued or running job holds this unique_key ({exc.diag.message_detail})"
        ) from exc
    except (pg.CheckViolation, pg.InvalidParameterValue, pg.NumericValueOutOfRange) as exc:
        raise InvalidOption(str(exc.diag.message_primary)) from exc

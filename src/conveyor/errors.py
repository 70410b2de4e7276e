"""The exceptions Conveyor raises, and the two a handler raises to steer its job.

Every error Conveyor raises on purpose derives from :class:`ConveyorError`, so callers can catch
the whole family at once. Input errors also derive from :class:`ValueError` (or :class:`LookupError`
for unknown ids and names) so that generic code that already catches those keeps working.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class ConveyorError(Exception):
    """Base class of every error raised by Conveyor."""


class ConfigurationError(ConveyorError):
    """The application is configured wrongly (no DSN, a bad schema name, ...)."""


class ValidationError(ConveyorError, ValueError):
    """Input was refused before anything was written."""


class InvalidQueueName(ValidationError):
    """A queue name does not match the allowed format."""


class PayloadError(ValidationError):
    """A job payload cannot be stored as JSON (not serialisable, NaN, or a NUL character)."""


class PayloadTooLarge(PayloadError):
    """A job payload exceeds the configured size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnknownOption(ValidationError):
    """An option name is not one Conveyor knows."""


class InvalidOption(ValidationError):
    """An option has the wrong type or a value out of range."""


class InvalidRetryDelay(InvalidOption):
    """A handler asked to run again after a delay the database cannot store (``Retry(after=...)``
    with NaN, infinity, more than ten years, or not a number); recorded as the attempt's error."""


class DatabaseUnavailable(ConveyorError):
    """The database could not be reached, or the connection broke mid-statement; safe to retry
    (an enqueue that raised this may or may not have committed, unless it ran in your own
    transaction, which is then broken)."""


class NotFound(ConveyorError, LookupError):
    """Something looked up by id or name does not exist."""


class JobNotFound(NotFound):
    """No job has this id (in the live table or the history)."""


class QueueNotFound(NotFound):
    """No queue has this name."""


class ScheduleNotFound(NotFound):
    """No schedule has this name."""


class JobStateError(ConveyorError):
    """The job is in a state that does not allow the requested action."""


class AttemptLost(JobStateError):
    """The attempt no longer holds its job (cancelled, recovered or expired), so it cannot
    complete it: the transaction that tried was rolled back, with everything written in it."""


class DuplicateJob(JobStateError):
    """The action would create a second queued job with the same ``unique_key``."""


class WaitTimeout(ConveyorError, TimeoutError):
    """``wait_for`` gave up: the job did not finish in time (it goes on; nothing is cancelled)."""


class MigrationError(ConveyorError):
    """The database schema cannot be brought to, or is not at, the version this code needs."""


class MigrationChecksumMismatch(MigrationError):
    """An applied migration file was changed after it was applied."""


class SchemaOutOfDate(MigrationError):
    """The database schema is behind this code: run ``conveyor migrate``."""


class SchemaTooNew(MigrationError):
    """The database schema has migrations this code does not know (a newer release applied them)."""


class Retry(Exception):
    """Raised by a handler to run the job again later without spending an attempt.

    ``after`` is a delay in seconds, a :class:`~datetime.timedelta`, or an absolute
    :class:`~datetime.datetime`; ``None`` means "as soon as a worker is free".
    """

    def __init__(self, after: float | timedelta | datetime | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested by the handler")
        self.after = after
        self.reason = reason


class Fail(Exception):
    """Raised by a handler to fail the job at once, with no further retry."""

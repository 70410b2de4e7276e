"""Conveyor: durable background jobs for Python, stored in PostgreSQL."""

from conveyor.app import Conveyor
from conveyor.clock import FrozenClock
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    DuplicateJob,
    Fail,
    InvalidOption,
    InvalidQueueName,
    JobNotFound,
    JobStateError,
    MigrationError,
    PayloadError,
    PayloadTooLarge,
    QueueNotFound,
    Retry,
    ScheduleNotFound,
    SchemaOutOfDate,
    UnknownOption,
    ValidationError,
)
from conveyor.models import (
    BulkResult,
    Job,
    JobState,
    Queue,
    QueuePolicy,
    QueueStats,
    Schedule,
    WorkerInfo,
)

__all__ = [
    "BulkResult",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "DuplicateJob",
    "Fail",
    "FrozenClock",
    "InvalidOption",
    "InvalidQueueName",
    "Job",
    "JobNotFound",
    "JobState",
    "JobStateError",
    "MigrationError",
    "PayloadError",
    "PayloadTooLarge",
    "Queue",
    "QueueNotFound",
    "QueuePolicy",
    "QueueStats",
    "Retry",
    "Schedule",
    "ScheduleNotFound",
    "SchemaOutOfDate",
    "UnknownOption",
    "ValidationError",
    "WorkerInfo",
]
__version__ = "0.1.0"

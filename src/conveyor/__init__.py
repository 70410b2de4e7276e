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
    SchemaOutOfDate,
    UnknownOption,
    ValidationError,
)
from conveyor.models import Job, JobState, Queue, QueuePolicy, QueueStats

__all__ = [
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
    "SchemaOutOfDate",
    "UnknownOption",
    "ValidationError",
]
__version__ = "0.1.0"

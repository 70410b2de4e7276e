"""Django: a task backend for Django's task framework, and the worker that runs its tasks.

See :mod:`conveyor.integrations.django.backend` for the settings. ``app`` (this module's
attribute, built on first access after ``django.setup()``) is the Conveyor app of the
``default`` task backend, for ``conveyor worker conveyor.integrations.django:app``.
"""

from __future__ import annotations

from typing import Any

from conveyor.integrations.django.backend import (
    ConveyorBackend,
    backend_for,
    complete,
    run_task,
    worker_app,
)

__all__ = ["ConveyorBackend", "backend_for", "complete", "run_task", "worker_app"]


def __getattr__(name: str) -> Any:
    # Built lazily: importing the module must not need Django settings (the task backend
    # handler imports it while the settings are read).
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

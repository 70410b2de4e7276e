"""``python manage.py conveyor_worker``: run Conveyor's worker for a Conveyor task backend."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from conveyor.integrations.django.backend import backend_for


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = "Run a Conveyor worker for the tasks of a Conveyor task backend."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default="default", help="The TASKS alias to serve.")
        parser.add_argument(
            "--queues", help="Comma-separated Django queue names (default: all of the backend's)."
        )
        parser.add_argument("--concurrency", type=int, default=10, help="Tasks at once.")
        parser.add_argument("--shutdown-timeout", type=float, default=30.0)
        parser.add_argument("--burst", action="store_true", help="Run the tasks due, then exit.")
        parser.add_argument("--migrate", action="store_true", help="Migrate Conveyor's schema.")

    def handle(self, *args: Any, **options: Any) -> None:
        backend = backend_for(options["backend"])
        queues = None
        if options["queues"]:
            queues = [backend.conveyor_queue(q.strip()) for q in options["queues"].split(",")]
        ran = backend.app.run_worker(
            queues,
            options["concurrency"],
            shutdown_timeout=options["shutdown_timeout"],
            burst=options["burst"],
            migrate=options["migrate"],
            install_signal_handlers=not options["burst"],
        )
        self.stdout.write(f"ran {ran} task attempts")

"""``python manage.py conveyor_worker``: run Conveyor's worker for a Conveyor task backend."""

from __future__ import annotations

import gc
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conveyor.app import Conveyor
from conveyor.errors import ConveyorError
from conveyor.integrations.django.backend import backend_for


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = "Run a Conveyor worker for the tasks of a Conveyor task backend."
    _app: Conveyor | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default="default", help="The TASKS alias to serve.")
        parser.add_argument(
            "--queues",
            help="Comma-separated Django queue names (default: all of the backend's; with "
            "QUEUES: [], those it has used so far, and default).",
        )
        parser.add_argument("--concurrency", type=int, default=10, help="Tasks at once.")
        parser.add_argument("--shutdown-timeout", type=float, default=30.0)
        parser.add_argument("--burst", action="store_true", help="Run the tasks due, then exit.")
        parser.add_argument("--migrate", action="store_true", help="Migrate Conveyor's schema.")

    def handle(self, *args: Any, **options: Any) -> None:
        names = None
        if options["queues"]:
            names = [q.strip() for q in options["queues"].split(",") if q.strip()]
        try:
            backend = backend_for(options["backend"])
            self._app = backend.app
            if options["migrate"]:
                backend.app.migrate()  # before looking up the queues it has
            queues = backend.worker_queues(names)
            if options["verbosity"] > 1:
                self.stdout.write(f"serving {', '.join(queues)}")
            ran = backend.app.run_worker(
                queues,
                options["concurrency"],
                shutdown_timeout=options["shutdown_timeout"],
                burst=options["burst"],
                install_signal_handlers=not options["burst"],
            )
        except (ImproperlyConfigured, ConveyorError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"ran {ran} task attempts")

    def run_from_argv(self, argv: list[str]) -> None:
        """As a command line: the process ends when the command returns, so the collector's
        last passes over every object Django and the worker made (about 0.2 s of an idle
        worker's exit) are skipped: the operating system frees the memory anyway."""
        try:
            super().run_from_argv(argv)
        finally:
            if self._app is not None:
                self._app.close()
            gc.freeze()

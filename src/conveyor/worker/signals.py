"""SIGTERM and SIGINT: the first asks for a graceful stop, the second for an immediate one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("conveyor.worker")
# A signal this soon after the first is the same request delivered twice (a process manager
# signalling every process of the group, and the --processes supervisor passing it on).
SAME_SIGNAL_WITHIN = 0.2


@contextlib.contextmanager
def graceful(stop: Callable[[], None], stop_now: Callable[[], None]) -> Iterator[None]:
    """Route SIGTERM/SIGINT to ``stop`` (first) and ``stop_now`` (second) while inside."""
    loop = asyncio.get_running_loop()
    received = 0
    first_at = 0.0

    def on_signal(signum: int) -> None:
        nonlocal received, first_at
        name = signal.Signals(signum).name
        if received == 1 and time.monotonic() - first_at < SAME_SIGNAL_WITHIN:
            log.debug("%s again at once: the same request, delivered twice", name)
            return
        received += 1
        if received == 1:
            first_at = time.monotonic()
            log.info("%s: finishing in-flight jobs, then stopping (again to stop now)", name)
            stop()
        else:
            log.warning("%s again: handing in-flight jobs back and stopping now", name)
            stop_now()

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            log.debug("cannot handle %s here (not the main thread?)", signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)

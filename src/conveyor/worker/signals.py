"""SIGTERM and SIGINT: the first asks for a graceful stop, the second for an immediate one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger("conveyor.worker")


@contextlib.contextmanager
def graceful(stop: Callable[[], None], stop_now: Callable[[], None]) -> Iterator[None]:
    """Route SIGTERM/SIGINT to ``stop`` (first) and ``stop_now`` (second) while inside."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
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

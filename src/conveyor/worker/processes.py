"""``conveyor worker --processes N``: supervise N worker processes for CPU-bound handlers.

Each child is an ordinary ``conveyor worker`` process. SIGTERM/SIGINT are passed on to every
child (a second signal too, which makes them stop at once). A child that dies on its own is
started again after a short, growing delay; the supervisor exits when all children have exited
after a stop, with status 0 only if every child exited cleanly.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("conveyor.worker")


def supervise(command: Sequence[str], processes: int) -> int:
    """Run ``processes`` copies of ``command`` until a signal stops them; return an exit code."""
    stopping = False
    children: list[subprocess.Popen[bytes]] = []
    restarts = [0] * processes

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        children.extend(subprocess.Popen(list(command)) for _ in range(processes))
        log.info("started %d worker processes: %s", processes, [c.pid for c in children])
        while True:
            alive = [c for c in children if c.poll() is None]
            if stopping and not alive:
                break
            if not stopping:
                for i, child in enumerate(children):
                    if child.poll() is not None:
                        restarts[i] += 1
                        delay = min(30.0, 0.5 * 2 ** min(restarts[i], 6))
                        log.warning(
                            "worker process %d exited with %s; restarting in %.1fs",
                            child.pid, child.returncode, delay,
                        )  # fmt: skip
                        time.sleep(delay)
                        if not stopping:
                            children[i] = subprocess.Popen(list(command))
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if all(c.returncode == 0 for c in children) else 1

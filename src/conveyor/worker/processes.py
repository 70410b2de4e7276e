"""``conveyor worker --processes N``: supervise N worker processes for CPU-bound handlers.

Each child is an ordinary ``conveyor worker`` process. SIGTERM/SIGINT are passed on to every
child (a second signal too, which makes them stop at once). A child that dies on its own is
started again after a short, growing delay; the supervisor exits when all children have exited
after a stop, with status 0 only if every child exited cleanly.

One signal is one graceful shutdown: each child runs in a session of its own, so a signal to the
supervisor's process group (Ctrl-C in a terminal, ``kill -INT -PGID``) reaches the children only
once, through the supervisor. (A manager that signals every process itself, as systemd's default
``KillMode=control-group`` does, delivers it twice; the worker counts two signals that close
together as one.) On Linux each child also gets SIGTERM when the supervisor dies, however it
died, so no child outlives a SIGKILLed supervisor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("conveyor.worker")

PR_SET_PDEATHSIG = 1


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

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(command), start_new_session=True, preexec_fn=on_parent_death(signal.SIGTERM)
        )

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        children.extend(start() for _ in range(processes))
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
                            children[i] = start()
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if all(c.returncode == 0 for c in children) else 1


def on_parent_death(signum: int) -> Callable[[], None] | None:
    """What a child runs before it executes the worker, so that it gets ``signum`` when this
    process dies (Linux's parent-death signal, kept across exec); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        # The parent may have died before the call: then no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return arm

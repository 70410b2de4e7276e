"""CPU of the database backends serving a benchmark's worker, read from ``/proc`` while they live
(so PostgreSQL must run on this host): shared by bench.cpu and bench.fair."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg


@contextlib.contextmanager
def backend_cpu(dsn: str, schema: str) -> Iterator[dict[int, int]]:
    """CPU ticks (user + system) by pid of the backends whose application_name ends with
    ``schema`` (a Conveyor app's), sampled every 50 ms until the block ends. A backend's CPU is
    read while it lives: a worker's pool closes with its drain."""
    seen: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                found = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
                    (f"% {schema}",),
                ).fetchall()
                for (pid,) in found:
                    try:
                        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    seen[pid] = max(seen.get(pid, 0), int(stat[11]) + int(stat[12]))
                time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield seen
    finally:
        time.sleep(0.2)
        done.set()
        sampler.join()

"""bench.fair's serving worker: no-op jobs, except that a probe job returns the wall-clock time
its handler started, so the bench can tell when it ran (started_at is the time of its claim).

    python -m bench.fair_worker DSN SCHEMA CONCURRENCY
"""

from __future__ import annotations

import sys
import time
from typing import Any

from conveyor import Conveyor, Job


def main() -> None:
    dsn, schema, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = Conveyor(dsn, schema=schema)

    @app.job("bench")
    async def noop(job: Job) -> Any:
        return time.time() if job.data.get("tenant") == "B" else None

    app.run_worker(concurrency=concurrency, poll_interval=5.0)


if __name__ == "__main__":
    main()

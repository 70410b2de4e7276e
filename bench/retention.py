"""Drain with delete-on-complete (retention 0) against a drain that keeps history, alternating.

    .venv/bin/python -m bench.retention [--dsn DSN] [--jobs 20000] [--rounds 5] [--processes 1]

Each round drains ``--jobs`` pre-loaded no-op jobs twice with one worker process (concurrency
10) per ``--processes``: once on a queue that keeps history (the default retention), once on a
queue with retention 0, in alternating order. Prints each round, the medians, the ratio of the
medians and the median of the per-round ratios (issue 15's target: >= 1.3x).
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.run import conveyor_drain
from conveyor.testing import LOCAL_TEST_DSN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", LOCAL_TEST_DSN))
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    kept: list[float] = []
    none: list[float] = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for keep_none in order:
            rate, _ = conveyor_drain(args.dsn, args.jobs, 10, args.processes, keep_none=keep_none)
            (none if keep_none else kept).append(rate)
        ratio = none[-1] / kept[-1]
        print(
            f"round {r + 1}: history kept {kept[-1]:,.0f} jobs/s, "
            f"retention 0 {none[-1]:,.0f} jobs/s ({ratio:.2f}x)",
            flush=True,
        )
    paired = statistics.median(n / k for n, k in zip(none, kept, strict=True))
    k, n = statistics.median(kept), statistics.median(none)
    print(
        f"\n| drain, {args.processes} process(es) x 10, {args.jobs:,} no-op jobs | jobs/s |\n"
        f"|---|---:|\n| history kept | {k:,.0f} |\n"
        f"| retention 0 (delete-on-complete) | {n:,.0f} |\n"
        f"| ratio (median of rounds' ratios) | {n / k:.2f}x ({paired:.2f}x) |"
    )


if __name__ == "__main__":
    main()

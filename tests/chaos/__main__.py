"""The long form of the chaos suite: ``python -m tests.chaos --minutes 10``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.chaos.harness import Chaos


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs sent per second")
    parser.add_argument("--fault-every", type=float, default=5.0, help="mean seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-chaos-") as tmp:
        chaos = Chaos(
            Path(tmp) / "pg",
            workers=args.workers,
            rate=args.rate,
            duration=args.minutes * 60,
            fault_every=args.fault_every,
            seed=args.seed,
        )
        report = chaos.run()
        print(report.table())
        if report.lost or report.double_attempts or report.missing_dead:
            print(chaos.worker_logs())
            raise SystemExit(1)


if __name__ == "__main__":
    main()

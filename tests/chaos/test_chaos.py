"""The short form of the chaos suite, run by CI: every kind of fault at least once while jobs
flow, then the audit. The long form: ``python -m tests.chaos --minutes 10``."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.harness import KINDS, Chaos


def test_no_job_is_lost_or_run_twice_per_attempt_under_faults(tmp_path: Path) -> None:
    chaos = Chaos(tmp_path / "pg", duration=len(KINDS) * 4.0, fault_every=3.0, rate=150)
    report = chaos.run()
    print(report.table())
    logs = chaos.worker_logs()
    assert {f.kind for f in report.faults} >= set(chaos.kinds), report.table()
    assert report.sent > 500, report.table()
    assert report.lost == [], report.table() + logs
    assert report.double_attempts == 0, report.table() + logs
    assert report.stale_starts == 0, report.table() + logs
    assert report.missing_dead == [] and report.unexpected_dead == [], report.table() + logs
    assert all(f.recovered_in is not None for f in report.faults), report.table() + logs

"""The A/B benchmark's arithmetic (bench/ab.py): medians, percentiles, pgbench parsing, ratios
and verdicts. No benchmark runs here."""

from __future__ import annotations

import math

import pytest

from bench.ab import (
    TARGETS,
    Check,
    Target,
    evaluate,
    last_json,
    median,
    medians,
    paired_ratios,
    percentile,
    pgbench_tps,
    ratio,
    table,
)

PGBENCH_15 = """\
pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/tmpx.sql
scaling factor: 1
query mode: simple
number of clients: 1
number of threads: 1
maximum number of tries: 1
number of transactions per client: 2000
number of transactions actually processed: 2000/2000
number of failed transactions: 0 (0.000%)
latency average = 0.322 ms
initial connection time = 4.210 ms
tps = 3103.846212 (without initial connection time)
"""


def test_median_of_rounds() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert math.isnan(median([]))


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([1.0, 3.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_is_nan_without_a_denominator() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(float("nan"), 2.0))


def test_pgbench_tps_excludes_connection_time() -> None:
    assert pgbench_tps(PGBENCH_15) == pytest.approx(3103.846212)
    with pytest.raises(ValueError):
        pgbench_tps("pgbench: error: connection refused\n")


def test_last_json_skips_other_lines() -> None:
    out = 'noise\n{"first": 1}\nmore noise\n{"rate": 2.5, "conveyor_file": "/t/src/x"}\n\n'
    assert last_json(out) == {"rate": 2.5, "conveyor_file": "/t/src/x"}
    with pytest.raises(ValueError):
        last_json("no result\n")


def test_medians_per_figure_over_rounds() -> None:
    runs = [
        {"round": r, "scenario": "send_one", "metrics": {"rate": rate, "seconds": 1.0}}
        for r, rate in enumerate((100.0, 300.0, 200.0))
    ] + [{"round": 0, "scenario": "latency_idle", "metrics": {"p50": 1.5, "ok": True}}]
    assert medians(runs) == {"send_one.rate": 200.0, "send_one.seconds": 1.0,
                             "latency_idle.p50": 1.5}  # fmt: skip


def test_ratio_to_baseline_and_floor_both_must_hold() -> None:
    target = Target("send", "send_one.rate", "jobs/s",
                    (Check("baseline", 1.8), Check("floor", 0.8)), "insert_one")  # fmt: skip
    floors = {"insert_one": 3000.0}
    met = evaluate(target, {"send_one.rate": 1000.0}, {"send_one.rate": 2500.0}, floors)
    assert (met.vs_baseline, met.met) == (2.5, True)
    assert met.vs_floor == pytest.approx(2500 / 3000)
    assert met.target == ">= 1.8x baseline; >= 0.8x floor"
    # 2.0x the baseline but 0.67x the floor: not met.
    half = evaluate(target, {"send_one.rate": 1000.0}, {"send_one.rate": 2000.0}, floors)
    assert half.met is False
    # A regression gives a ratio under 1, never rounded up.
    worse = evaluate(target, {"send_one.rate": 1000.0}, {"send_one.rate": 950.0}, floors)
    assert (worse.vs_baseline, worse.met) == (0.95, False)


def test_ratio_to_another_figure_of_the_current_tree() -> None:
    target = Target("2 processes", "d2.rate", "jobs/s", (Check("other", 1.1, "d1.rate", "1p"),))
    row = evaluate(target, {"d2.rate": 1.0}, {"d1.rate": 1000.0, "d2.rate": 1100.0}, {})
    assert row.met is True and row.notes == ["1.10x 1p"]
    row = evaluate(target, {}, {"d1.rate": 1000.0, "d2.rate": 1099.0}, {})
    assert row.met is False and math.isnan(row.vs_baseline)


def test_latency_bound_and_missing_figures() -> None:
    target = Target("p99", "lat.p99", "ms", (Check("at_most", 5),))
    assert evaluate(target, {}, {"lat.p99": 5.0}, {}).met is True
    assert evaluate(target, {}, {"lat.p99": 5.01}, {}).met is False
    assert evaluate(target, {}, {}, {}).met is False  # not measured is not met
    info = evaluate(Target("info", "x.rate", "jobs/s"), {}, {"x.rate": 1.0}, {})
    assert info.met is None and info.target == "-"


def test_table_shows_every_target_with_its_verdict() -> None:
    current = {t.figure: 1.0 for t in TARGETS}
    rows = [evaluate(t, current, current, {}) for t in TARGETS]
    text = table(rows)
    assert len(text.splitlines()) == 2 + len(TARGETS)
    assert "**not met**" in text  # 1.0x the baseline meets no speed-up target
    assert "| 5. enqueue->start p50, idle worker | ms | 1.00 | 1.00 | 1.00x | <= 2 |" in text


def test_paired_ratios_compare_runs_of_the_same_round() -> None:
    base = [
        {"round": r, "scenario": "d", "metrics": {"rate": v}}
        for r, v in enumerate((100.0, 50.0, 200.0))
    ]
    cur = [
        {"round": r, "scenario": "d", "metrics": {"rate": v}}
        for r, v in enumerate((110.0, 60.0, 180.0))
    ]
    # Round by round 1.1x, 1.2x, 0.9x: the median is 1.1x, where the medians' ratio is 110/100.
    assert paired_ratios(base, cur) == {"d.rate": pytest.approx(1.1)}
    target = Target("d", "d.rate", "jobs/s", (Check("baseline", 1.0),))
    row = evaluate(target, medians(base), medians(cur), {}, paired_ratios(base, cur))
    assert "1.10x (1.10x)" in table([row])

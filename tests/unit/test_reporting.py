"""Percentiles of wait times from counts per bucket, as the counters store them."""

from __future__ import annotations

import itertools

import pytest

from conveyor.config import STATS_WAIT_BOUNDS_MS
from conveyor.reporting import wait_percentile

BOUNDS = (10.0, 20.0, 50.0)


def test_no_started_job_has_no_percentile() -> None:
    assert wait_percentile({}, 0.5, BOUNDS) is None
    assert wait_percentile({-1: 4}, 0.5, BOUNDS) is None  # cancelled before they started


def test_a_percentile_is_interpolated_within_its_bucket() -> None:
    # 10 jobs between 10 and 20 ms: the median is halfway through that bucket.
    assert wait_percentile({1: 10}, 0.5, BOUNDS) == pytest.approx(15.0)
    # 90 fast (under 10 ms), 10 between 20 and 50 ms: p95 is halfway through the slow bucket.
    assert wait_percentile({0: 90, 2: 10, -1: 7}, 0.95, BOUNDS) == pytest.approx(35.0)
    assert wait_percentile({0: 90, 2: 10}, 0.5, BOUNDS) == pytest.approx(10 * 50 / 90)


def test_the_last_bucket_reports_its_lower_bound() -> None:
    assert wait_percentile({3: 5}, 0.95, BOUNDS) == 50.0


def test_the_stored_bounds_rise_by_at_most_five_thirds() -> None:
    pairs = itertools.pairwise(STATS_WAIT_BOUNDS_MS)
    assert all(1 < b / a <= 5 / 3 + 1e-9 for a, b in pairs)
    assert STATS_WAIT_BOUNDS_MS[0] == 1.0 and STATS_WAIT_BOUNDS_MS[-1] >= 3_600_000

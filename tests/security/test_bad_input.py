"""Bad input, tried systematically with hypothesis: hostile queue names and option values, huge
and deeply nested payloads, NUL bytes and invalid Unicode, non-JSON types, SQL meta-characters in
every string that reaches a query, invalid or never-firing cron expressions, time zones that do
not exist. Each gets a typed error and writes nothing; what is accepted is stored verbatim; the
worker stays up."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from conveyor import Conveyor, Job, JobState
from conveyor.errors import (
    InvalidOption,
    PayloadError,
    PayloadTooLarge,
    ValidationError,
)
from conveyor.options import JOB_OPTIONS, QUEUE_NAME

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Strings that have broken queues elsewhere: SQL and format meta-characters, the schema token of
# our own templates, NUL, a lone surrogate, very long ones.
NASTY = [
    "'; DROP TABLE job; --",
    '"; DROP SCHEMA conveyor CASCADE; --',
    "$$; SELECT pg_sleep(10); $$",
    "%s %(x)s {} {schema} {schema_literal}",
    "\\x00\\",
    "\x00",
    "\ud800",
    "a" * 10_000,
    "q' OR '1'='1",
    "ünï©ødé ✓",
]
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.sampled_from(NASTY),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=400)),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(),
)
JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(NASTY),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
        st.tuples(inner),
        st.frozensets(st.integers(), max_size=2),
        st.binary(max_size=5),
    ),
    max_leaves=12,
)


def count_jobs(app: Conveyor) -> int:
    return sum(sum(stats.counts.values()) for stats in app.queue_stats())


def equal_json(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        # jsonb keeps numbers as numeric: 1e16 comes back as the integer 10000000000000000.
        return a == b or float(a) == float(b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple | list) and isinstance(b, list):
        return len(a) == len(b) and all(equal_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal_json(a[k], b[k]) for k in a)
    return bool(a == b)


@SETTINGS
@given(name=st.one_of(st.text(max_size=200), st.sampled_from(NASTY)))
def test_hostile_queue_names_are_refused_or_stored_verbatim(app: Conveyor, name: str) -> None:
    before = count_jobs(app)
    try:
        job_id = app.send(name, {"x": 1})
    except ValidationError:
        assert not QUEUE_NAME.fullmatch(name)
        assert count_jobs(app) == before
        return
    assert QUEUE_NAME.fullmatch(name)
    assert app.get_job(job_id).queue == name


@SETTINGS
@given(option=st.sampled_from(JOB_OPTIONS), value=ANY_VALUE)
def test_any_option_value_is_accepted_or_refused_with_a_typed_error(
    app: Conveyor, option: str, value: Any
) -> None:
    before = count_jobs(app)
    try:
        app.send("options.q", {"n": 1}, **{option: value})
    except ValidationError:
        assert count_jobs(app) == before
    except Exception as exc:  # the point: nothing else may escape
        pytest.fail(f"{option}={value!r} raised {type(exc).__name__}: {exc}")


@SETTINGS
@given(data=JSONISH)
def test_payloads_round_trip_or_are_refused_with_payload_error(app: Conveyor, data: Any) -> None:
    before = count_jobs(app)
    try:
        job_id = app.send("payload.q", data)
    except PayloadError:
        assert count_jobs(app) == before
        return
    assert equal_json(data, app.get_job(job_id).data)


def test_huge_deep_nul_and_surrogate_payloads_are_refused(app: Conveyor) -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    cases = [
        ({"blob": "x" * (2 * 1024 * 1024)}, PayloadTooLarge),
        (deep, PayloadError),
        ({"nul": "a\x00b"}, PayloadError),
        ({"k\x00": 1}, PayloadError),
        ({"lone": "\udc80"}, PayloadError),
        ({"nan": float("nan")}, PayloadError),
        ({1, 2}, PayloadError),
        (object(), PayloadError),
        (b"bytes", PayloadError),
        (datetime.now(UTC), PayloadError),
    ]
    for data, error in cases:
        with pytest.raises(error):
            app.send("payload.q", data)
        with pytest.raises(error):
            app.send_batch([("payload.q", {"ok": 1}), ("payload.q", data)])
    assert count_jobs(app) == 0


def test_sql_meta_characters_reach_every_query_as_data(app: Conveyor) -> None:
    storable = [s for s in NASTY if "\x00" not in s and "\ud800" not in s]
    for i, text in enumerate(storable):
        key = text[:200]
        job_id = app.send(
            "meta.q",
            {"text": text},
            unique_key=f"u{i}{key}",
            group_key=f"g{key}",
        )
        job = app.get_job(job_id)
        stored = (job.data, job.unique_key, job.group_key)
        assert stored == ({"text": text}, f"u{i}{key}", f"g{key}")
        app.send("meta.q", {}, singleton_key=key, singleton_seconds=60)
        with pytest.raises(ValidationError):
            app.list_jobs(state=text)
        with pytest.raises(ValidationError):
            app.get_job(text)
        with pytest.raises(ValidationError):
            app.create_queue(text)
        with pytest.raises(ValidationError):
            app.schedule(text, "* * * * *")
        with pytest.raises(ValidationError):
            app.publish(text, {})
        found = app.list_jobs(search=text[:100])
        assert job_id in {j.id for j in found}
    assert len(app.list_jobs(queue="meta.q", limit=1000)) == 2 * len(storable)


@pytest.mark.parametrize(
    "cron", ["0 0 30 2 *", "0 0 31 4 *", "61 * * * *", "* * *", "@reboot", "", "a b c d e"]
)
def test_invalid_or_never_firing_cron_is_refused(app: Conveyor, cron: str) -> None:
    with pytest.raises(InvalidOption):
        app.schedule("never", cron)
    assert app.list_schedules() == []


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus", "../../etc/passwd", "", "UTC; DROP TABLE schedule", "Europe/Pariss"]
)
def test_time_zones_that_do_not_exist_are_refused(app: Conveyor, tz: str) -> None:
    with pytest.raises(InvalidOption):
        app.schedule("tz", "0 8 * * *", tz=tz)
    assert app.list_schedules() == []


SQL_OPTION = st.dictionaries(
    st.one_of(st.sampled_from([*JOB_OPTIONS, "on_complete"]), st.text(max_size=10)),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**40), max_value=2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.sampled_from(NASTY[:5]),
        st.lists(st.text(max_size=40), max_size=2),
    ),
    max_size=4,
)


@SETTINGS
@given(
    queue=st.one_of(st.text(max_size=40), st.sampled_from(NASTY[:5])),
    options=SQL_OPTION,
)
def test_the_sql_send_function_refuses_bad_input_with_a_data_error(
    app: Conveyor, conveyor_dsn: str, queue: str, options: dict[str, Any]
) -> None:
    if "\x00" in queue or any("\x00" in str(v) or "\x00" in k for k, v in options.items()):
        return  # a NUL cannot even be sent as a query parameter
    with psycopg.connect(conveyor_dsn) as conn:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SELECT {}.send(%s, %s, %s)").format(sql.Identifier(app.schema)),
                    (queue, Jsonb({"n": 1}), Jsonb(options)),
                )
        except psycopg.Error as exc:
            # A data exception (22xxx) or an integrity violation (23xxx), never a syntax error,
            # an undefined object or an internal error, which would mean input became SQL.
            assert exc.sqlstate is not None and exc.sqlstate[:2] in ("22", "23"), (
                exc.sqlstate,
                str(exc),
            )


def test_the_worker_stays_up_whatever_a_handler_does(app: Conveyor) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    @app.job("bad.return", retry_limit=0)
    def bad_return(job: Job) -> Any:
        return {1, 2}  # not JSON

    @app.job("bad.raise", retry_limit=0)
    def bad_raise(job: Job) -> None:
        raise Unprintable()

    @app.job("bad.exit", retry_limit=0)
    def bad_exit(job: Job) -> None:
        raise SystemExit(3)

    @app.job("bad.nul", retry_limit=0)
    def bad_nul(job: Job) -> str:
        return "nul\x00inside"

    @app.job("good", retry_limit=0)
    def good(job: Job) -> int:
        return 1

    ids = [app.send(q, {}) for q in ("bad.return", "bad.raise", "bad.exit", "bad.nul", "good")]
    assert app.drain() == 5
    states = [app.get_job(i).state for i in ids]
    assert states == [JobState.FAILED] * 4 + [JobState.COMPLETED]
    assert all(app.get_job(i).error for i in ids[:4])

"""Pure validation rules: no database."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from conveyor.batching import fold
from conveyor.errors import (
    InvalidOption,
    InvalidQueueName,
    PayloadError,
    PayloadTooLarge,
    UnknownOption,
)
from conveyor.options import (
    JobSpec,
    check_backoff,
    check_queue_name,
    check_schema_name,
    check_seconds,
    encode_payload,
    job_spec,
    new_job_id,
    queue_policy,
)


@pytest.mark.parametrize("name", ["a", "email.send", "reports/daily", "A_b-c:d", "_x", "9"])
def test_good_queue_names(name: str) -> None:
    assert check_queue_name(name) == name


@pytest.mark.parametrize("name", ["", " a", "a b", ".a", "-a", "a\x00", "é", "a" * 129, 5, None])
def test_bad_queue_names(name: object) -> None:
    with pytest.raises(InvalidQueueName):
        check_queue_name(name)


@pytest.mark.parametrize("name", ["Conveyor", "1abc", "a-b", "", "x" * 49, 'a"b'])
def test_bad_schema_names(name: str) -> None:
    with pytest.raises(InvalidOption):
        check_schema_name(name)


def test_payload_is_compact_json() -> None:
    assert encode_payload({"a": [1, 2.5, None, True]}, 100) == '{"a":[1,2.5,null,true]}'
    assert encode_payload("é", 10) == '"é"'


def test_payload_may_mention_a_nul_escape_as_text() -> None:
    assert encode_payload("\\u0000", 100) == '"\\\\u0000"'  # a backslash, then u0000: storable


def test_deep_payload_is_refused() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PayloadError):
        encode_payload(deep, 10**9)


def test_seconds_accept_numbers_and_timedeltas() -> None:
    assert check_seconds("x", 1, allow_zero=False) == 1.0
    assert check_seconds("x", timedelta(minutes=1), allow_zero=False) == 60.0
    assert check_seconds("x", 0, allow_zero=True) == 0.0
    for bad in (0, -1, "1", True, float("inf"), float("nan")):
        with pytest.raises(InvalidOption):
            check_seconds("x", bad, allow_zero=False)


def test_backoff_kinds() -> None:
    assert [check_backoff(v) for v in (True, False, "linear")] == ["exponential", "fixed", "linear"]


def test_unknown_option_suggests_the_close_one() -> None:
    with pytest.raises(UnknownOption, match="did you mean 'retry_limit'"):
        job_spec("q", {}, {"retry_limt": 3}, 1000)


def test_start_after_datetime_must_be_aware() -> None:
    spec = job_spec("q", {}, {"start_after": datetime(2030, 1, 1, tzinfo=UTC)}, 1000)
    assert spec.run_at == datetime(2030, 1, 1, tzinfo=UTC) and spec.delay is None
    with pytest.raises(InvalidOption):
        job_spec("q", {}, {"start_after": datetime(2030, 1, 1)}, 1000)


def test_singleton_seconds_alone_throttles_the_whole_queue() -> None:
    spec = job_spec("q", {}, {"singleton_seconds": 10}, 1000)
    assert (spec.singleton_key, spec.singleton_seconds) == ("", 10)


def test_job_ids_are_time_ordered_uuid7() -> None:
    ids = [new_job_id() for _ in range(1000)]
    assert all(i.version == 7 for i in ids)
    assert all(i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 1000
    assert [i.bytes[:6] for i in ids] == sorted(i.bytes[:6] for i in ids)
    # Built without UUID.__init__: the same object as one built with it.
    for i in ids[:3]:
        twin = uuid.UUID(int=i.int)
        assert (i == twin, hash(i), str(i), i.is_safe) == (
            True,
            hash(twin),
            str(twin),
            twin.is_safe,
        )


def test_a_forked_child_draws_random_bits_of_its_own() -> None:
    new_job_id()  # the parent holds a chunk of random bits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id's random tail, to the parent
        os.close(read)
        os.write(write, new_job_id().bytes[8:])
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 8)
    os.close(read)
    os.waitpid(pid, 0)
    assert new_job_id().bytes[8:] != theirs


def test_payload_size_counts_utf8_bytes() -> None:
    assert encode_payload("é" * 4, 10) == '"' + "é" * 4 + '"'  # 10 bytes
    with pytest.raises(PayloadTooLarge):
        encode_payload("é" * 5, 11)  # 7 characters, 12 bytes
    with pytest.raises(PayloadError):
        encode_payload("\ud800", 100)


def test_queue_policy_rate_limit_forms() -> None:
    assert queue_policy({"rate_limit": 5}, partial=False) == {"rate_limit": 5, "rate_interval": 1.0}
    assert queue_policy({"rate_limit": (5, 60)}, partial=False)["rate_interval"] == 60.0
    assert queue_policy({"rate_limit": None}, partial=True) == {
        "rate_limit": None,
        "rate_interval": None,
    }


def test_fold_keeps_plain_jobs_and_merges_keys() -> None:
    plain = [job_spec("q", {"n": n}, {}, 1000) for n in range(3)]
    rows, where = fold(plain)
    assert rows == plain and where == [0, 1, 2]
    keyed = [
        job_spec("q", 1, {"unique_key": "a"}, 1000),
        job_spec("q", 2, {"unique_key": "a", "unique_mode": "replace"}, 1000),
        job_spec("r", 3, {"unique_key": "a"}, 1000),
        job_spec("q", 4, {"singleton_key": "s", "singleton_seconds": 5}, 1000),
        job_spec("q", 5, {"singleton_key": "s", "singleton_seconds": 5}, 1000),
    ]
    rows, where = fold(keyed)
    assert where == [0, 0, 1, 2, 2]
    assert rows[0].id == keyed[0].id and rows[0].data == "2"
    assert rows[2].data == "4"


def test_job_ids_are_monotonic_within_a_millisecond() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert ids == sorted(ids, key=lambda i: i.bytes)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("priority", 3),
        ("start_after", datetime(2031, 1, 1, tzinfo=UTC)),
        ("start_after", 5),
        ("retry_limit", 0),
        ("retry_delay", 0),
        ("retry_backoff", "linear"),
        ("retry_delay_max", 9),
        ("expire_in", 9),
        ("retention", 0),
        ("dead_letter", "dl"),
        ("group_key", "g"),
        ("fair_key", "f"),
    ],
)
def test_a_fast_path_batch_sends_an_option_one_job_sets(name: str, value: object) -> None:
    from conveyor._store.rows import PLAIN_ARRAYS, plain_one_params, plain_params

    bare = job_spec("q", 1, {}, 1000)
    given = job_spec("r", 2, {name: value}, 1000)
    assert bare.plain and given.plain
    params = plain_params([bare, given], "{}", None, None)
    assert params["queues"] == ["q", "r"]
    column = {"start_after": "run_at" if isinstance(value, datetime) else "delay"}.get(name, name)
    assert column in PLAIN_ARRAYS
    for other in PLAIN_ARRAYS[3:]:
        expected = [None, getattr(given, other)] if other == column else None
        assert params[other] == expected, other
    one = plain_one_params(given, "{}", None, None)
    assert one["options"] is not None and column in one["options"]
    assert plain_one_params(bare, "{}", None, None)["options"] is None


def test_keys_dependencies_and_hooks_leave_the_fast_path() -> None:
    for options in (
        {"unique_key": "k"},
        {"singleton_key": "k", "singleton_seconds": 5},
        {"depends_on": [uuid.uuid4()]},
        {"on_complete": "hooks"},
    ):
        assert not job_spec("q", 1, options, 1000).plain


def test_a_batch_without_options_is_taken_as_columns() -> None:
    from conveyor.options import bare_jobs

    none: dict[str, object] = {}
    bare = bare_jobs([("q", 1), ("r", [2], {}), ("q", None)], lambda q: none, 1000)
    assert bare is not None
    assert (bare.queues, bare.data) == (["q", "r", "q"], ["1", "[2]", "null"])
    assert bare.specs() == [
        JobSpec(id=i, queue=q, data=d)
        for i, q, d in zip(bare.ids, bare.queues, bare.data, strict=True)
    ]
    assert bare_jobs([("q", 1), ("q", 2, {"priority": 1})], lambda q: none, 1000) is None
    assert (
        bare_jobs([("q", 1), ("h", 2)], lambda q: {"retry_limit": 1} if q == "h" else none, 1000)
        is None
    )
    with pytest.raises(InvalidQueueName):
        bare_jobs([("q", 1), (["q"], 2)], lambda q: none, 1000)
    with pytest.raises(PayloadTooLarge):
        bare_jobs([("q", "x" * 2000), ("bad name", 1)], lambda q: none, 1000)


@pytest.mark.parametrize("name", ["group_key", "unique_key", "singleton_key", "fair_key"])
def test_a_key_with_a_lone_surrogate_is_refused_before_it_reaches_the_database(name: str) -> None:
    window = {"singleton_seconds": 60} if name == "singleton_key" else {}
    with pytest.raises(InvalidOption, match="lone surrogate"):
        job_spec("q", {}, {name: "a\ud800", **window}, 1 << 20)
    assert getattr(job_spec("q", {}, {name: "clé-🔑", **window}, 1 << 20), name) == "clé-🔑"

"""The lean acknowledgement and claim (migration 0014) write and return what the general path
does: completions acked alone (the fast path) archive the same row as completions acked beside
a retry (the general path); a retention-0 job whose dependant arrives while its ack waits on
the sender's lock still releases it; the claim returns what as_fetched(job) gives."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from conveyor import Conveyor, JobState

ACK = (
    "SELECT id, state FROM {s}.ack_jobs(%s::uuid[], %s::uuid[], %s::integer[], %s::text[], "
    "%s::jsonb[], %s::jsonb[], %s::double precision[], NULL)"
)


def claim(conn: psycopg.Connection[Any], schema: str, queue: str, worker: uuid.UUID) -> list[Any]:
    conn.execute(
        f"INSERT INTO {schema}.worker (id, hostname, pid, queues, concurrency, metadata) "
        "VALUES (%s, 'test', 1, %s, 1, '{}') ON CONFLICT DO NOTHING",
        (worker, [queue]),
    )
    return conn.execute(
        f"SELECT * FROM {schema}.fetch_jobs(%s, %s, 10, NULL)", ([queue], worker)
    ).fetchall()


def ack(
    conn: psycopg.Connection[Any], schema: str, worker: uuid.UUID, acks: list[tuple[Any, ...]]
) -> list[Any]:
    """acks: (id, attempt, outcome, result JSON text)."""
    n = len(acks)
    return conn.execute(
        ACK.format(s=schema),
        (
            [a[0] for a in acks], [worker] * n, [a[1] for a in acks], [a[2] for a in acks],
            [a[3] for a in acks], [None] * n, [0.0] * n,
        ),
    ).fetchall()  # fmt: skip


def archived(dsn: str, schema: str, job_id: Any) -> dict[str, Any]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        row = conn.execute(f"SELECT * FROM {schema}.job_archive WHERE id = %s", (job_id,))
        found = row.fetchone()
    assert found is not None
    return dict(found)


def test_completions_acked_alone_archive_what_a_mixed_batch_archives(
    app: Conveyor, conveyor_dsn: str
) -> None:
    fast = app.send("lean.q", {"n": 1}, retention=3600, priority=3)
    general = app.send("lean.q", {"n": 1}, retention=3600, priority=3)
    retried = app.send("lean.q", {"n": 2}, retention=3600, priority=3)
    worker = uuid.uuid4()
    s = app.schema
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        rows = {r[0]: r for r in claim(conn, s, "lean.q", worker)}
        assert set(rows) == {fast, general, retried}
        result = json.dumps({"ok": True})
        assert ack(conn, s, worker, [(fast, 1, "completed", result)]) == [(fast, "completed")]
        changed = ack(
            conn, s, worker,
            [(general, 1, "completed", result), (retried, 1, "retry", None)],
        )  # fmt: skip
        assert sorted(changed) == sorted([(general, "completed"), (retried, "retry")])
    a, b = archived(conveyor_dsn, s, fast), archived(conveyor_dsn, s, general)
    differ = {"id", "created_at", "run_at", "started_at", "finished_at", "drop_at", "worker_id"}
    assert {k: v for k, v in a.items() if k not in differ} == {
        k: v for k, v in b.items() if k not in differ
    }
    assert a["result"] == {"ok": True} and a["state"] == "completed" and a["priority"] == 3


def test_a_fenced_out_completion_changes_nothing_on_the_fast_path(
    app: Conveyor, conveyor_dsn: str
) -> None:
    job_id = app.send("lean.q", {})
    worker = uuid.uuid4()
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        claim(conn, app.schema, "lean.q", worker)
        assert ack(conn, app.schema, worker, [(job_id, 2, "completed", None)]) == []
        assert ack(conn, app.schema, uuid.uuid4(), [(job_id, 1, "completed", None)]) == []
    assert app.get_job(job_id).state is JobState.ACTIVE


def send_sql(app: Conveyor, dsn: str, queue: str, options: dict[str, Any]) -> Any:
    """A job sent with SQL send(), which takes options Python's send() has no name for (meta)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            f"SELECT {app.schema}.send(%s, '{{}}', %s::jsonb)", (queue, json.dumps(options))
        ).fetchone()
    assert found is not None
    return found[0]


def test_meta_is_kept_in_the_archive_and_the_dead_letters(app: Conveyor, conveyor_dsn: str) -> None:
    app.job("lean.meta", lambda job: None)

    def fail(job: object) -> None:
        raise RuntimeError("no")

    app.job("lean.dead", fail)
    done = send_sql(app, conveyor_dsn, "lean.meta", {"meta": {"tenant": "a"}})
    dead = send_sql(app, conveyor_dsn, "lean.dead", {"meta": {"tenant": "b"}, "retry_limit": 0})
    app.drain()
    assert app.get_job(done).meta == {"tenant": "a"}
    assert app.get_job(dead).state is JobState.FAILED
    assert app.get_job(dead).meta == {"tenant": "b"}


def test_a_dependant_sent_while_a_retention_0_ack_waits_is_still_released(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """The sender holds the child's row (FOR KEY SHARE) and its edge is not yet committed when
    the ack starts: the ack waits for it, and must then see the edge and keep the row."""
    child = app.send("lean.child", {}, retention=0)
    worker = uuid.uuid4()
    s = app.schema
    with (
        psycopg.connect(conveyor_dsn, autocommit=True) as acker,
        psycopg.connect(conveyor_dsn) as sender,
    ):
        claim(acker, s, "lean.child", worker)
        parent = sender.execute(
            f"SELECT {s}.send('lean.parent', NULL, %s::jsonb)",
            (json.dumps({"depends_on": [str(child)]}),),
        ).fetchone()
        assert parent is not None
        done: list[Any] = []
        acking = threading.Thread(
            target=lambda: done.append(ack(acker, s, worker, [(child, 1, "completed", '"r"')]))
        )
        acking.start()
        acking.join(0.5)
        assert acking.is_alive()  # waiting for the sender's lock
        sender.commit()
        acking.join(10)
        assert done == [[(child, "completed")]]
    assert app.get_job(parent[0]).state is JobState.CREATED  # released, runnable
    assert archived(conveyor_dsn, s, child)["result"] == "r"


def test_the_claim_returns_what_as_fetched_gives(app: Conveyor, conveyor_dsn: str) -> None:
    job_id = send_sql(app, conveyor_dsn, "lean.claim", {"meta": {"m": 1}, "priority": 2})
    worker = uuid.uuid4()
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        (row,) = claim(conn, app.schema, "lean.claim", worker)
        again = conn.execute(
            f"SELECT ({app.schema}.as_fetched(j)).* FROM {app.schema}.job j WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row == again

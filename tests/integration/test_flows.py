"""Flows and events against a real PostgreSQL: dependencies, parent/children flows, completion
hooks and publish/subscribe."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, Fail, Job, JobState
from conveyor._store.store_async import AsyncStore
from conveyor.errors import InvalidOption, JobNotFound, ValidationError


async def test_diamond_runs_the_join_once_after_both_branches_with_their_results(
    app_async: Conveyor,
) -> None:
    order: list[str] = []
    seen: dict[str, Any] = {}

    @app_async.job("step")
    async def step(job: Job) -> str:
        order.append(job.data["name"])
        if job.data["name"] == "D":
            seen.update({str(k): v for k, v in job.results.items()})
        return f"{job.data['name']}-done"

    a = await app_async.send_async("step", {"name": "A"})
    b = await app_async.send_async("step", {"name": "B"}, depends_on=[a])
    c = await app_async.send_async("step", {"name": "C"}, depends_on=[a])
    d = await app_async.send_async("step", {"name": "D"}, depends_on=[b, c])
    assert (await app_async.get_job_async(b)).state is JobState.WAITING
    assert (await app_async.get_job_async(d)).state is JobState.WAITING

    assert await app_async.drain_async() == 4
    assert order[0] == "A" and order[-1] == "D" and order.count("D") == 1
    assert sorted(order[1:3]) == ["B", "C"]
    assert seen == {str(b): "B-done", str(c): "C-done"}
    done = await app_async.get_job_async(d)
    assert done.state is JobState.COMPLETED
    assert done.depends_on == [b, c]
    assert done.results == {b: "B-done", c: "C-done"}


async def test_a_failed_dependency_fails_the_dependant_by_default(app_async: Conveyor) -> None:
    ran: list[str] = []

    @app_async.job("step")
    async def step(job: Job) -> None:
        ran.append(job.data["name"])
        if job.data["name"] == "B":
            raise Fail("B breaks")

    a = await app_async.send_async("step", {"name": "A"})
    b = await app_async.send_async("step", {"name": "B"}, depends_on=[a])
    d = await app_async.send_async("step", {"name": "D"}, depends_on=[a, b])
    e = await app_async.send_async("step", {"name": "E"}, depends_on=[d])
    await app_async.drain_async()
    assert ran == ["A", "B"]
    for job_id, name in ((d, "D"), (e, "E")):
        job = await app_async.get_job_async(job_id)
        assert job.state is JobState.FAILED, name
        assert job.error is not None and job.error["type"] == "DependencyFailed"
    assert (await app_async.get_job_async(d)).error["dependency"] == str(b)  # type: ignore[index]
    dead = await app_async.list_jobs_async(state="failed")
    assert {j.id for j in dead} == {b, d, e}


async def test_policy_run_runs_the_dependant_anyway_with_the_results_that_exist(
    app_async: Conveyor,
) -> None:
    seen: list[dict[uuid.UUID, Any]] = []

    @app_async.job("step")
    async def step(job: Job) -> str:
        if job.data["name"] == "B":
            raise Fail("B breaks")
        if job.data["name"] == "D":
            seen.append(job.results)
        return job.data["name"]

    a = await app_async.send_async("step", {"name": "A"})
    b = await app_async.send_async("step", {"name": "B"})
    d = await app_async.send_async(
        "step", {"name": "D"}, depends_on=[a, b], on_dependency_failure="run"
    )
    await app_async.drain_async()
    assert seen == [{a: "A"}]
    assert (await app_async.get_job_async(d)).state is JobState.COMPLETED


async def test_cancelling_a_dependency_applies_the_policy(app_async: Conveyor) -> None:
    a = await app_async.send_async("step", {})
    d = await app_async.send_async("step", {}, depends_on=[a])
    await app_async.cancel_async(a)
    job = await app_async.get_job_async(d)
    assert job.state is JobState.FAILED
    assert "cancelled" in job.error["message"]  # type: ignore[index]


async def test_dependencies_finished_before_the_send_are_taken_into_account(
    app_async: Conveyor,
) -> None:
    @app_async.job("step")
    async def step(job: Job) -> int:
        return 7

    a = await app_async.send_async("step", {})
    await app_async.drain_async()
    ready = await app_async.send_async("step", {}, depends_on=[a])
    assert (await app_async.get_job_async(ready)).state is JobState.CREATED

    broken = await app_async.send_async("step", {})
    await app_async.cancel_async(broken)
    doomed = await app_async.send_async("step", {}, depends_on=[broken])
    assert (await app_async.get_job_async(doomed)).state is JobState.FAILED
    fine = await app_async.send_async("step", {}, depends_on=[broken], on_dependency_failure="run")
    assert (await app_async.get_job_async(fine)).state is JobState.CREATED


async def test_an_unknown_dependency_is_refused_and_nothing_is_sent(app_async: Conveyor) -> None:
    missing = uuid.uuid4()
    with pytest.raises(JobNotFound, match=str(missing)):
        await app_async.send_batch_async(
            [("step", {"n": 1}), ("step", {"n": 2}, {"depends_on": [missing]})]
        )
    assert await app_async.list_jobs_async() == []
    with pytest.raises(InvalidOption):
        await app_async.send_async("step", {}, depends_on="not-a-list")
    with pytest.raises(InvalidOption):
        await app_async.send_async("step", {}, on_dependency_failure="run")
    a = await app_async.send_async("step", {})
    with pytest.raises(InvalidOption):
        await app_async.send_async("step", {}, depends_on=[a], on_dependency_failure="ignore")


async def test_a_waiting_job_is_not_fetched_and_can_be_cancelled(app_async: Conveyor) -> None:
    a = await app_async.send_async("slow", {})
    d = await app_async.send_async("step", {}, depends_on=[a])
    ran: list[uuid.UUID] = []

    @app_async.job("step")
    async def step(job: Job) -> None:
        ran.append(job.id)

    assert await app_async.drain_async(queues=["step"]) == 0
    await app_async.cancel_async(d)
    assert (await app_async.get_job_async(d)).state is JobState.CANCELLED
    stats = await app_async.queue_stats_async("slow")
    assert stats.queued == 1 and ran == []


async def test_flow_of_a_thousand_children_runs_the_parent_once_after_the_last(
    app_async: Conveyor,
) -> None:
    parents: list[dict[uuid.UUID, Any]] = []
    children_done = 0

    @app_async.job("child")
    async def child(job: Job) -> int:
        nonlocal children_done
        children_done += 1
        return int(job.data["n"]) ** 2

    @app_async.job("parent")
    async def parent(job: Job) -> int:
        assert children_done == 1000
        parents.append(job.results)
        return sum(job.results.values())

    parent_id = await app_async.flow_async(
        ("parent", {"report": "squares"}),
        children=[("child", {"n": n}) for n in range(1000)],
    )
    created = await app_async.get_job_async(parent_id)
    assert created.state is JobState.WAITING and len(created.depends_on) == 1000

    await app_async.drain_async(concurrency=50)
    assert len(parents) == 1
    assert len(parents[0]) == 1000
    assert list(parents[0].values()) == [n * n for n in range(1000)]
    done = await app_async.get_job_async(parent_id)
    assert done.state is JobState.COMPLETED and done.result == sum(n * n for n in range(1000))


async def test_flow_is_one_statement_in_the_callers_transaction(
    app_async: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    fetch = AsyncStore._fetch

    async def counted(self: AsyncStore, name: str, *args: Any) -> list[Any]:
        statements.append(name)
        return await fetch(self, name, *args)

    monkeypatch.setattr(AsyncStore, "_fetch", counted)
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as conn:
        parent_id = await app_async.flow_async(
            ("parent", {}),
            children=[("child", {"n": n}) for n in range(10)],
            connection=conn,
        )
        assert statements == ["job_insert_linked"]
        async with await psycopg.AsyncConnection.connect(conveyor_dsn) as other:
            cur = await other.execute(
                sql.SQL("SELECT count(*) FROM {}.job").format(
                    sql.Identifier(app_async.settings.schema)
                )
            )
            assert await cur.fetchone() == (0,)  # invisible until the caller commits
        await conn.commit()
    assert len((await app_async.get_job_async(parent_id)).depends_on) == 10


async def test_nested_flows_release_level_by_level(app_async: Conveyor) -> None:
    order: list[str] = []

    @app_async.job("node")
    async def node(job: Job) -> str:
        order.append(job.data["name"])
        return job.data["name"]

    root = await app_async.flow_async(
        {"queue": "node", "data": {"name": "root"}},
        children=[
            {
                "queue": "node",
                "data": {"name": "mid"},
                "children": [("node", {"name": "leaf1"}), ("node", {"name": "leaf2"})],
            },
            ("node", {"name": "side"}),
        ],
    )
    await app_async.drain_async()
    assert order.index("root") == 4
    assert order.index("mid") > max(order.index("leaf1"), order.index("leaf2"))
    result = await app_async.get_job_async(root)
    assert sorted(result.results.values()) == ["mid", "side"]
    with pytest.raises(InvalidOption):
        await app_async.flow_async({"queue": "node", "kids": []})
    with pytest.raises(InvalidOption):
        await app_async.flow_async(("node",))  # type: ignore[arg-type]


async def test_on_complete_sends_the_outcome_to_the_hook_queue(app_async: Conveyor) -> None:
    @app_async.job("work")
    async def work(job: Job) -> dict[str, int]:
        if job.data.get("fail"):
            raise Fail("no luck")
        return {"ok": 1}

    good = await app_async.send_async("work", {"n": 1}, on_complete="hooks")
    bad = await app_async.send_async("work", {"fail": True}, on_complete="hooks")
    dropped = await app_async.send_async("work", {"n": 3}, on_complete="hooks")
    await app_async.cancel_async(dropped)
    await app_async.drain_async(queues=["work"])
    hooks = await app_async.list_jobs_async(queue="hooks", order="asc")
    outcomes = {h.data["job_id"]: h.data for h in hooks}
    assert set(outcomes) == {str(good), str(bad), str(dropped)}
    assert outcomes[str(good)]["state"] == "completed"
    assert outcomes[str(good)]["result"] == {"ok": 1}
    assert outcomes[str(good)]["error"] is None
    assert outcomes[str(good)]["data"] == {"n": 1}
    assert outcomes[str(bad)]["state"] == "failed"
    assert outcomes[str(bad)]["error"]["message"] == "no luck"
    assert outcomes[str(dropped)]["state"] == "cancelled"
    with pytest.raises(ValidationError):
        await app_async.send_async("work", {}, on_complete="bad queue name")


async def test_publish_fans_out_to_every_subscribed_queue(app_async: Conveyor) -> None:
    for queue in ("mail", "audit", "search"):
        assert await app_async.subscribe_async("user.created", queue) is True
    assert await app_async.subscribe_async("user.created", "mail") is False
    await app_async.subscribe_async("user.deleted", "audit")
    assert await app_async.list_subscriptions_async("user.created") == [
        ("user.created", "audit"),
        ("user.created", "mail"),
        ("user.created", "search"),
    ]

    ids = await app_async.publish_async("user.created", {"id": 7}, priority=3)
    assert len(ids) == 3
    jobs = [await app_async.get_job_async(i) for i in ids]
    assert [j.queue for j in jobs] == ["audit", "mail", "search"]
    assert all(j.data == {"id": 7} and j.priority == 3 for j in jobs)
    assert await app_async.publish_async("nobody.listens", {}) == []

    assert await app_async.unsubscribe_async("user.created", "search") == 1
    assert len(await app_async.publish_async("user.created", {"id": 8})) == 2
    with pytest.raises(ValidationError):
        await app_async.publish_async("bad event!", {})
    with pytest.raises(InvalidOption):
        await app_async.publish_async("user.created", {}, depends_on=[uuid.uuid4()])


async def test_publish_joins_the_callers_transaction(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    await app_async.subscribe_async("order.paid", "invoice")
    await app_async.subscribe_async("order.paid", "ship")
    await app_async.subscribe_async("order.paid", "notify")
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as conn:
        ids = await app_async.publish_async("order.paid", {"order": 1}, connection=conn)
        assert len(ids) == 3
        await conn.rollback()
    assert await app_async.list_jobs_async() == []
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as conn:
        ids = await app_async.publish_async("order.paid", {"order": 2}, connection=conn)
        await conn.commit()
    assert len(await app_async.list_jobs_async()) == 3


async def test_the_sql_functions_link_and_publish(app_async: Conveyor, conveyor_dsn: str) -> None:
    schema = app_async.settings.schema
    a = await app_async.send_async("step", {})
    async with await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            f"SELECT {schema}.send('step', '{{}}', jsonb_build_object("
            "'depends_on', jsonb_build_array(%s::text), 'on_complete', 'hooks'))",
            (str(a),),
        )
        row = await cur.fetchone()
        assert row is not None
        d = row[0]
        await conn.execute(f"INSERT INTO {schema}.subscription (event, queue) VALUES ('e', 'q')")
        cur = await conn.execute(f"SELECT queue FROM {schema}.publish('e', '{{}}')")
        assert await cur.fetchall() == [("q",)]
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            await conn.execute(
                f"SELECT {schema}.send('step', '{{}}', '{{\"on_dependency_failure\": \"x\"}}')"
            )
    assert (await app_async.get_job_async(d)).state is JobState.WAITING

    @app_async.job("step")
    async def step(job: Job) -> None:
        return None

    await app_async.drain_async(queues=["step"])
    assert (await app_async.get_job_async(d)).state is JobState.COMPLETED
    assert len(await app_async.list_jobs_async(queue="hooks")) == 1


async def test_concurrent_completion_of_two_dependencies_releases_the_join_once(
    app_async: Conveyor,
) -> None:
    """Two workers complete B and C at the same moment, many times over: the join is released
    exactly once each time (never stranded, never twice)."""
    joins = 0

    @app_async.job("branch")
    async def branch(job: Job) -> None:
        await asyncio.sleep(0.001)

    @app_async.job("join")
    async def join(job: Job) -> None:
        nonlocal joins
        joins += 1

    rounds = 100
    join_ids = []
    for _ in range(rounds):
        b = await app_async.send_async("branch", {})
        c = await app_async.send_async("branch", {})
        join_ids.append(await app_async.send_async("join", {}, depends_on=[b, c]))
    await asyncio.gather(
        app_async.drain_async(queues=["branch"], concurrency=1),
        app_async.drain_async(queues=["branch"], concurrency=1),
    )
    states = {(await app_async.get_job_async(j)).state for j in join_ids}
    assert states == {JobState.CREATED}
    await app_async.drain_async(queues=["join"])
    assert joins == rounds

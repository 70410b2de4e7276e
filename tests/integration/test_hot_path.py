"""The hot path's shortcuts (issue 14) do what the general path does, with fewer statements."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobState
from conveyor._store.worker_store import Ack, WorkerStore
from conveyor.worker.completer import Completer


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The named statements the worker's store runs, in order, from now on."""
    names: list[str] = []
    original = WorkerStore._fetch

    async def recording(self: WorkerStore, name: str, *args: Any) -> list[Any]:
        names.append(name)
        return await original(self, name, *args)

    monkeypatch.setattr(WorkerStore, "_fetch", recording)
    return names


def test_a_busy_worker_writes_a_batchs_outcomes_with_its_next_claim(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.job("fold.q")
    async def handle(job: Job) -> int:
        return int(job.data["i"])

    ids = [app.send("fold.q", {"i": i}) for i in range(40)]
    names = record_statements(monkeypatch)
    assert app.drain(concurrency=2, prefetch=2) == 40
    assert "job_ack_fetch" in names
    jobs = [app.get_job(i) for i in ids]
    assert [(j.state, j.result) for j in jobs] == [(JobState.COMPLETED, i) for i in range(40)]


async def test_a_refused_outcome_in_a_folded_batch_fails_only_its_job(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """The database refuses the whole statement (a delay past the timestamp range): the
    outcomes are written the slow way, which isolates the bad one, and the claim goes alone."""
    ids = [await app_async.send_async("fold.bad", {"n": n}) for n in range(5)]
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    worker = uuid.uuid4()
    written: list[tuple[str, str | None]] = []
    try:
        await store.worker_register(worker, "test", 1, ["fold.bad"], 5)
        assert len(await store.job_fetch(["fold.bad"], worker, 5, None)) == 5
        later = [await app_async.send_async("fold.bad", {"n": n}) for n in range(3)]
        completer = Completer(
            store,
            worker,
            lambda: None,
            lambda ack, changed: written.append((ack.outcome, changed and changed.state)),
            lambda exc: None,
        )
        for job_id in ids:
            delay = 1e13 if job_id == ids[2] else None
            outcome = "retry" if delay else "completed"
            completer.add(Ack(job_id, 1, outcome, error=json.dumps({"m": 1}), delay=delay))
        claimed = await completer.fetch(["fold.bad"], 3)
    finally:
        await store.close()
    assert sorted(row[0] for row in claimed) == sorted(later)
    states = {i: (await app_async.get_job_async(i)).state for i in ids}
    assert [states[i] for i in ids if i != ids[2]] == [JobState.COMPLETED] * 4
    bad = await app_async.get_job_async(ids[2])
    assert bad.state is JobState.RETRY
    assert bad.errors[-1]["type"] == "OutcomeRefused"
    assert sorted(written) == [("completed", "completed")] * 4 + [("retry", "retry")]

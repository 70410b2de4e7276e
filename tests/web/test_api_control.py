"""The admin API's pause/resume and bulk endpoints, in the shape the dashboard builds against."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conveyor import Conveyor, JobState
from tests.web.test_api import api, assert_error, web  # noqa: F401  (fixtures)


async def test_pause_and_resume_a_queue(
    app_async: Conveyor,
    api: httpx.AsyncClient,  # noqa: F811
) -> None:
    app_async.job("web.mail")(lambda job: None)
    await app_async.send_async("web.mail", {"n": 1})
    paused = await api.post("/api/queues/web.mail/pause")
    assert (paused.status_code, paused.json()) == (200, {"queue": "web.mail", "paused": True})
    listed = (await api.get("/api/queues")).json()["queues"]
    assert [(q["name"], q["paused"]) for q in listed] == [("web.mail", True)]
    assert (await api.get("/api/queues/web.mail")).json()["paused"] is True
    assert await app_async.drain_async() == 0
    resumed = await api.post("/api/queues/web.mail/resume")
    assert (resumed.status_code, resumed.json()) == (200, {"queue": "web.mail", "paused": False})
    assert (await api.get("/api/queues/web.mail")).json()["paused"] is False
    assert await app_async.drain_async() == 1
    assert_error(await api.post("/api/queues/web.none/pause"), 404, "QueueNotFound")
    assert_error(await api.post("/api/queues/web.none/resume"), 404, "QueueNotFound")


async def test_bulk_dry_run_then_action(
    app_async: Conveyor,
    api: httpx.AsyncClient,  # noqa: F811
) -> None:
    await app_async.send_batch_async([("web.bulk", {"tenant": "acme", "n": n}) for n in range(3)])
    await app_async.send_async("web.bulk", {"tenant": "other"})
    body: dict[str, Any] = {
        "action": "cancel",
        "filter": {"queue": "web.bulk", "state": ["created"], "search": "acme"},
        "dry_run": True,
    }
    dry = await api.post("/api/jobs/bulk", json=body)
    assert (dry.status_code, dry.json()) == (
        200,
        {"action": "cancel", "dry_run": True, "matched": 3, "affected": 0},
    )
    assert (await app_async.queue_stats_async("web.bulk")).queued == 4
    done = await api.post("/api/jobs/bulk", json={**body, "dry_run": False})
    assert done.json() == {"action": "cancel", "dry_run": False, "matched": 3, "affected": 3}
    counts = (await app_async.queue_stats_async("web.bulk")).counts
    assert (counts[JobState.CREATED], counts[JobState.CANCELLED]) == (1, 3)
    again = await api.post(
        "/api/jobs/bulk",
        json={"action": "reprioritize", "filter": {"older_than": 0}, "priority": 4},
    )
    assert again.json() == {"action": "reprioritize", "dry_run": False, "matched": 1, "affected": 1}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"action": "cancel"},
        {"action": "explode", "filter": {"queue": "q"}},
        {"action": "cancel", "filter": {}},
        {"action": "cancel", "filter": "queue=q"},
        {"action": "cancel", "filter": {"queue": "q", "colour": "red"}},
        {"action": "cancel", "filter": {"queue": 5}},
        {"action": "cancel", "filter": {"state": ["completed"]}},
        {"action": "cancel", "filter": {"state": "nonsense"}},
        {"action": "cancel", "filter": {"state": 5}},
        {"action": "cancel", "filter": {"state": [5, None]}},
        {"action": ["cancel"], "filter": {"queue": "q"}},
        {"action": "cancel", "filter": {"older_than": "1h"}},
        {"action": "cancel", "filter": {"older_than": -5}},
        {"action": "cancel", "filter": {"search": ""}},
        {"action": "cancel", "filter": {"group_key": ["a"]}},
        {"action": "cancel", "filter": {"queue": "q"}, "dry_run": "yes"},
        {"action": "cancel", "filter": {"queue": "q"}, "priority": 1},
        {"action": "reprioritize", "filter": {"queue": "q"}},
        {"action": "reprioritize", "filter": {"queue": "q"}, "priority": "high"},
        {"action": "cancel", "filter": {"queue": "q"}, "batch_size": 5},
    ],
)
async def test_bad_bulk_input_is_a_400_with_a_json_error_and_changes_nothing(
    app_async: Conveyor,
    api: httpx.AsyncClient,  # noqa: F811
    body: dict[str, Any],
) -> None:
    await app_async.send_batch_async([("q", {"n": n}) for n in range(2)])
    assert_error(await api.post("/api/jobs/bulk", json=body), 400)
    assert (await app_async.queue_stats_async("q")).queued == 2
    assert {j.priority for j in await app_async.list_jobs_async("q")} == {0}


async def test_make_a_queue_fair_and_not(
    app_async: Conveyor,
    api: httpx.AsyncClient,  # noqa: F811
) -> None:
    job = await app_async.send_async("web.tenants", {"n": 1}, fair_key="t-1")
    made = await api.post("/api/queues/web.tenants/fair", json={"fair": True})
    assert (made.status_code, made.json()) == (200, {"queue": "web.tenants", "fair": True})
    listed = (await api.get("/api/queues")).json()["queues"]
    assert [(q["name"], q["fair"]) for q in listed] == [("web.tenants", True)]
    assert (await api.get(f"/api/jobs/{job}")).json()["fair_key"] == "t-1"
    unmade = await api.post("/api/queues/web.tenants/fair", json={"fair": False})
    assert unmade.json() == {"queue": "web.tenants", "fair": False}
    assert_error(await api.post("/api/queues/web.tenants/fair", json={"fair": "x"}), 400,
                 "InvalidOption")  # fmt: skip
    assert_error(await api.post("/api/queues/web.tenants/fair", json={"fair": None}), 400,
                 "InvalidOption")  # fmt: skip
    assert not (await app_async.get_queue_async("web.tenants")).fair
    assert_error(await api.post("/api/queues/web.none/fair"), 404, "QueueNotFound")


async def test_send_a_job_with_its_options_and_fair_key(
    app_async: Conveyor,
    api: httpx.AsyncClient,  # noqa: F811
) -> None:
    await app_async.create_queue_async("web.tenants", fair=True)
    body = {"queue": "web.tenants", "data": {"report": 7},
            "options": {"fair_key": "t-42", "priority": 3, "retry_limit": 1}}  # fmt: skip
    sent = await api.post("/api/jobs", json=body)
    assert sent.status_code == 200, sent.text
    job = sent.json()
    assert (job["queue"], job["state"], job["data"]) == ("web.tenants", "created", {"report": 7})
    assert (job["fair_key"], job["priority"], job["retry_limit"]) == ("t-42", 3, 1)
    stored = await app_async.get_job_async(job["id"])
    assert (stored.fair_key, stored.data) == ("t-42", {"report": 7})
    # No options, no payload: a job with data null; the fair queue gives it the key "".
    bare = (await api.post("/api/jobs", json={"queue": "web.tenants"})).json()
    assert (bare["data"], bare["fair_key"]) == (None, "")
    # start_after: a delay in seconds, or a moment.
    later = (await api.post("/api/jobs", json={"queue": "web.later",
             "options": {"start_after": "2099-01-01T00:00:00"}})).json()  # fmt: skip
    assert later["run_at"].startswith("2099-01-01T00:00:00")
    # The same unique key: the job already holding it.
    keyed = {"queue": "web.tenants", "options": {"unique_key": "u1"}}
    first = (await api.post("/api/jobs", json=keyed)).json()
    assert (await api.post("/api/jobs", json=keyed)).json()["id"] == first["id"]


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        ({}, "InvalidOption", "queue is required"),
        ({"queue": 5}, "InvalidOption", "queue is required"),
        ({"queue": "bad name!"}, "InvalidQueueName", None),
        ({"queue": "web.q", "colour": "red"}, "InvalidOption", "unknown parameter 'colour'"),
        ({"queue": "web.q", "options": [1]}, "InvalidOption", "options must be an object"),
        ({"queue": "web.q", "options": {"fair_key": ""}}, "InvalidOption", "fair_key"),
        ({"queue": "web.q", "options": {"fair_key": 5}}, "InvalidOption", "fair_key"),
        ({"queue": "web.q", "options": {"fair_key": "x" * 256}}, "InvalidOption", "fair_key"),
        ({"queue": "web.q", "options": {"tenant": "a"}}, "UnknownOption", "tenant"),
        ({"queue": "web.q", "options": {"priority": "high"}}, "InvalidOption", "priority"),
        ({"queue": "web.q", "options": {"start_after": "soon"}}, "InvalidOption", "start_after"),
    ],
)
async def test_sending_a_bad_job_is_refused_with_a_typed_error_and_writes_nothing(
    app_async: Conveyor,
    api: httpx.AsyncClient,  # noqa: F811
    body: dict[str, Any],
    kind: str,
    words: str | None,
) -> None:
    message = assert_error(await api.post("/api/jobs", json=body), 400, kind)
    if words is not None:
        assert words in message
    assert await app_async.list_jobs_async() == []

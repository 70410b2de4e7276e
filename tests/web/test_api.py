"""The admin API against the real database: authentication, CSRF and origin checks, input
errors as JSON, the OpenAPI document, and every action's happy path."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from conveyor import Conveyor, Job, JobState
from conveyor.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidQueueName,
    JobNotFound,
    JobStateError,
    QueueNotFound,
)
from conveyor.web import create_app, login_link
from conveyor.web.api import conveyor_error_status
from conveyor.web.openapi import openapi_document

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SOME_ID = "0190f1f4-6c2e-7c4e-8a51-1f6f7f0a0b0c"
ORIGIN = "http://testserver"


def endpoints() -> list[tuple[str, str]]:
    """Every (method, path) of the API, from the OpenAPI document, with sample path values."""
    found = []
    for path, item in openapi_document()["paths"].items():
        for method in item:
            found.append((method.upper(), path.replace("{id}", SOME_ID).replace("{name}", "q")))
    return found


WRITES = [(m, p) for m, p in endpoints() if m in ("POST", "DELETE")]


def web_client(web: Starlette, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url=ORIGIN, headers=headers
    )


@pytest.fixture
def web(app_async: Conveyor) -> Starlette:
    return create_app(app_async, token=TOKEN, metrics=False)


@pytest.fixture
async def api(web: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(web, **BEARER) as client:
        yield client


@pytest.fixture
async def anonymous(web: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(web) as client:
        yield client


@pytest.fixture
async def browser(web: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client logged in through the login form, as a browser is (cookie, no bearer)."""
    async with web_client(web) as client:
        response = await client.post("/login", data={"token": TOKEN, "next": "/"})
        assert response.status_code == 303
        yield client


async def csrf_of(client: httpx.AsyncClient) -> str:
    page = await client.get("/")
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found, page.text
    return found.group(1)


def assert_error(response: httpx.Response, status: int, kind: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"type", "message"} and error["message"]
    if kind is not None:
        assert error["type"] == kind
    return str(error["message"])


async def failed_job(app: Conveyor, queue: str = "web.fail", data: Any = None) -> str:
    @app.job(queue, retry_limit=0)
    async def boom(job: Job) -> None:
        raise RuntimeError("boom")

    job_id = await app.send_async(queue, data if data is not None else {"n": 1})
    await app.drain_async([queue])
    assert (await app.get_job_async(job_id)).state is JobState.FAILED
    return str(job_id)


# -- configuration -------------------------------------------------------------------------------


def test_create_app_refuses_to_run_without_a_token(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="CONVEYOR_DASHBOARD_TOKEN"):
        create_app(app)
    with pytest.raises(ConfigurationError):
        create_app(app, token="")


async def test_the_token_may_come_from_the_environment(
    app_async: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_DASHBOARD_TOKEN", "from-env")
    web = create_app(app_async, metrics=False)
    async with web_client(web, Authorization="Bearer from-env") as client:
        assert (await client.get("/api/queues")).status_code == 200
    async with web_client(web, **BEARER) as client:
        assert_error(await client.get("/api/queues"), 401, "Unauthorized")


# -- authentication, CSRF, origin ----------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), endpoints())
async def test_every_endpoint_refuses_without_credentials(
    anonymous: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await anonymous.request(method, path)
    assert_error(response, 401, "Unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer not-the-token"}
    assert_error(await anonymous.request(method, path, headers=wrong), 401, "Unauthorized")


async def test_metrics_need_credentials_too(app_async: Conveyor) -> None:
    web = create_app(app_async, token=TOKEN)
    try:
        async with web_client(web) as client:
            assert_error(await client.get("/metrics"), 401, "Unauthorized")
            response = await client.get("/metrics", headers=BEARER)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "conveyor_jobs_started_total" in response.text
    finally:
        web.state.metrics.close()


@pytest.mark.parametrize(("method", "path"), WRITES)
async def test_cross_site_writes_are_refused_even_with_a_bearer_token(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    evil = {"Origin": "https://evil.example"}
    assert_error(await api.request(method, path, headers=evil), 403, "Forbidden")
    fetch = {"Sec-Fetch-Site": "cross-site"}
    assert_error(await api.request(method, path, headers=fetch), 403, "Forbidden")
    assert_error(await api.request(method, path, headers={"Origin": "null"}), 403, "Forbidden")


async def test_a_cookie_write_needs_the_sessions_csrf_token(
    app_async: Conveyor, browser: httpx.AsyncClient
) -> None:
    job_id = await app_async.send_async("web.q", {"n": 1}, start_after=3600)
    path = f"/api/jobs/{job_id}/cancel"
    same_origin = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
    message = assert_error(await browser.post(path, headers=same_origin), 403, "Forbidden")
    assert "CSRF" in message
    wrong = {**same_origin, "X-CSRF-Token": "guess"}
    assert_error(await browser.post(path, headers=wrong), 403, "Forbidden")
    assert (await app_async.get_job_async(job_id)).state is JobState.CREATED

    token = await csrf_of(browser)
    cross = {"Origin": "https://evil.example", "X-CSRF-Token": token}
    assert_error(await browser.post(path, headers=cross), 403, "Forbidden")
    assert (await app_async.get_job_async(job_id)).state is JobState.CREATED

    response = await browser.post(path, headers={**same_origin, "X-CSRF-Token": token})
    assert response.status_code == 200 and response.json()["state"] == "cancelled"

    other = await app_async.send_async("web.q", {"n": 2}, start_after=3600)
    response = await browser.post(
        f"/api/jobs/{other}/cancel", data={"csrf_token": token}, headers=same_origin
    )
    assert response.status_code == 200 and response.json()["state"] == "cancelled"


async def test_a_session_from_another_token_is_not_accepted(
    app_async: Conveyor, browser: httpx.AsyncClient
) -> None:
    other = create_app(app_async, token="another-token", secret_key="shared", metrics=False)
    mine = create_app(app_async, token=TOKEN, secret_key="shared", metrics=False)
    async with web_client(mine) as client:
        await client.post("/login", data={"token": TOKEN})
        assert (await client.get("/api/queues")).status_code == 200
        cookies = client.cookies
    async with web_client(other) as client:
        client.cookies = cookies
        assert_error(await client.get("/api/queues"), 401)


# -- the login page --------------------------------------------------------------------------


async def test_login_sets_a_strict_session_cookie_and_logout_ends_it(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.get("/jobs?state=failed")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/jobs%3Fstate%3Dfailed"

    refused = await anonymous.post("/login", data={"token": "wrong", "next": "/"})
    assert refused.status_code == 401 and "Wrong token" in refused.text
    assert "set-cookie" not in refused.headers

    cross = await anonymous.post(
        "/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and "set-cookie" not in cross.headers

    response = await anonymous.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"].lower()
    assert "conveyor_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert TOKEN not in response.headers["set-cookie"]

    assert (await anonymous.get("/api/queues")).status_code == 200
    token = await csrf_of(anonymous)
    assert (await anonymous.post("/logout", data={"csrf_token": "nope"})).status_code == 403
    response = await anonymous.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert_error(await anonymous.get("/api/queues"), 401)


async def test_a_login_link_signs_a_browser_in_once(web: Starlette) -> None:
    link = login_link(web, "http://testserver/")
    assert TOKEN not in link
    path = link.removeprefix(ORIGIN)
    async with web_client(web) as browser:
        response = await browser.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "conveyor_session=" in response.headers["set-cookie"]
        assert (await browser.get("/api/queues")).status_code == 200
        assert (await browser.get("/")).status_code == 200
    async with web_client(web) as second:
        again = await second.get(path)
        assert again.status_code == 401 and "used already or has expired" in again.text
        assert "set-cookie" not in again.headers
        assert_error(await second.get("/api/queues"), 401)
        forged = await second.get("/login/link?ticket=made-up")
        assert forged.status_code == 401 and "set-cookie" not in forged.headers


async def test_an_expired_login_link_is_refused(web: Starlette) -> None:
    links = web.state.login_links
    now = [1000.0]
    links.clock = lambda: now[0]
    path = login_link(web, ORIGIN, seconds=60).removeprefix(ORIGIN)
    now[0] += 60
    async with web_client(web) as browser:
        response = await browser.get(path)
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert_error(await browser.get("/api/queues"), 401)
    fresh = login_link(web, ORIGIN, seconds=60).removeprefix(ORIGIN)
    now[0] += 59
    async with web_client(web) as browser:
        assert (await browser.get(f"{fresh}&next=/jobs")).headers["location"] == "/jobs"


async def test_pages_render_and_escape_what_jobs_contain(
    app_async: Conveyor, browser: httpx.AsyncClient
) -> None:
    evil = "<script>alert('x')</script>"
    job_id = await failed_job(app_async, "web.evil", {"note": evil})
    await app_async.schedule_async("nightly", "0 3 * * *", queue="web.evil", data={"a": evil})
    pages = ["/", "/jobs", "/jobs?queue=web.evil&state=failed&search=alert", f"/jobs/{job_id}"]
    pages += ["/dead", "/dead?queue=web.evil", "/schedules", "/workers"]
    for path in pages:
        response = await browser.get(path)
        assert response.status_code == 200, (path, response.text)
        assert "<script>alert" not in response.text, path
    detail = (await browser.get(f"/jobs/{job_id}")).text
    assert "&lt;script&gt;alert(" in detail
    assert "RuntimeError" in detail and "Traceback" in detail

    @app_async.job("web.progress")
    async def halfway(job: Job) -> None:
        job.report_progress(40, "<i>rows</i> written")

    done = await app_async.send_async("web.progress")
    await app_async.drain_async(["web.progress"])
    page = (await browser.get(f"/jobs/{done}")).text
    assert '<progress max="100" value="40.0">' in page
    assert "40% · &lt;i&gt;rows&lt;/i&gt; written" in page

    assert (await browser.get(f"/jobs/{SOME_ID}")).status_code == 404
    assert (await browser.get("/jobs/not-a-uuid")).status_code == 400
    assert (await browser.get("/jobs?state=bogus")).status_code == 400
    assert (await browser.get("/static/dashboard.js")).status_code == 200


async def test_the_app_mounts_under_a_prefix(app_async: Conveyor) -> None:
    host = Starlette(
        routes=[
            Route("/", lambda request: httpx.Response(200)),
            Mount("/jobs", create_app(app_async, token=TOKEN, metrics=False)),
        ]
    )
    await app_async.send_async("mounted.q", {"n": 1})
    async with web_client(host) as client:
        response = await client.get("/jobs/")
        assert response.status_code == 303
        assert response.headers["location"] == "/jobs/login?next=/jobs/"
        response = await client.post("/jobs/login", data={"token": TOKEN, "next": "/jobs/"})
        assert response.headers["location"] == "/jobs/"
        page = await client.get("/jobs/")
        assert 'href="/jobs/static/dashboard.css"' in page.text
        assert 'data-stats="/jobs/api/stats"' in page.text
        queues = await client.get("/jobs/api/queues", headers=BEARER)
        assert [q["name"] for q in queues.json()["queues"]] == ["mounted.q"]
        doc = await client.get("/jobs/api/openapi.json", headers=BEARER)
        assert doc.json()["servers"] == [{"url": "/jobs"}]


# -- input errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "state=bogus",
        "state=created,bogus",
        "limit=abc",
        "limit=0",
        "limit=100000",
        "offset=-1",
        "order=sideways",
        "order=created_at;drop",
        "since=yesterday",
        "queue=bad name!",
        "sort=priority",
    ],
)
async def test_a_bad_filter_is_a_400_with_a_json_error(api: httpx.AsyncClient, query: str) -> None:
    assert_error(await api.get(f"/api/jobs?{query}"), 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/jobs/not-a-uuid"),
        ("POST", "/api/jobs/not-a-uuid/retry"),
        ("DELETE", "/api/jobs/not-a-uuid"),
        ("GET", "/api/dead?limit=x"),
        ("GET", "/api/dead?queue=bad%20name"),
        ("POST", "/api/dead/retry"),
        ("POST", "/api/dead/purge?older_than=soon"),
        ("POST", "/api/dead/purge?older_than=-5"),
        ("GET", "/api/queues?verbose=1"),
    ],
)
async def test_bad_ids_and_parameters_are_400(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_error(await api.request(method, path), 400)


async def test_a_body_must_be_a_json_object(api: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    assert_error(await api.post("/api/dead/retry", content=b"[1]", headers=headers), 400)
    assert_error(await api.post("/api/dead/retry", content=b"{nope", headers=headers), 400)


async def test_unknown_api_paths_answer_json(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/api/nothing"), 404, "NotFound")
    assert_error(await api.put("/api/jobs"), 405, "HTTPError")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (JobNotFound("x"), 404),
        (QueueNotFound("x"), 404),
        (JobStateError("x"), 409),
        (InvalidQueueName("x"), 400),
        (DatabaseUnavailable("x"), 503),
        (RuntimeError("x"), None),
    ],
)
def test_conveyor_errors_map_to_statuses(error: Exception, status: int | None) -> None:
    assert conveyor_error_status(error) == status


# -- the OpenAPI document ------------------------------------------------------------------------


async def test_the_openapi_document_is_valid_and_lists_every_route(
    api: httpx.AsyncClient, web: Starlette
) -> None:
    response = await api.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = {
        (method, route.path)
        for route in web.routes
        if isinstance(route, Route) and route.path.startswith("/api")
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert documented == served


# -- happy paths ---------------------------------------------------------------------------------


async def test_queues_with_their_counts(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    await app_async.create_queue_async("web.a", concurrency=2)
    await app_async.send_batch_async([("web.a", {"n": i}) for i in range(3)])
    await failed_job(app_async, "web.b")

    listed = (await api.get("/api/queues")).json()["queues"]
    by_name = {q["name"]: q for q in listed}
    assert by_name["web.a"]["concurrency"] == 2
    assert by_name["web.a"]["stats"]["counts"]["created"] == 3
    assert by_name["web.a"]["stats"]["queued"] == 3
    assert by_name["web.b"]["stats"]["counts"]["failed"] == 1

    one = (await api.get("/api/queues/web.a")).json()
    assert one["name"] == "web.a" and one["stats"]["queued"] == 3
    assert_error(await api.get("/api/queues/web.none"), 404, "QueueNotFound")

    purged = await api.post("/api/queues/web.a/purge")
    assert purged.json() == {"queue": "web.a", "purged": 3}
    assert (await app_async.queue_stats_async("web.a")).queued == 0
    assert_error(await api.post("/api/queues/web.none/purge"), 404)

    stats = (await api.get("/api/stats")).json()
    assert stats["totals"]["failed"] == 1 and stats["totals"]["created"] == 0
    assert {s["queue"] for s in stats["queues"]} == {"web.a", "web.b"}


async def test_listing_and_filtering_jobs(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    first = await app_async.send_async("web.list", {"city": "Lisbon"})
    second = await app_async.send_async("web.list", {"city": "Oslo"})
    other = await app_async.send_async("web.other", {"city": "Lisbon"})
    dead = await failed_job(app_async, "web.list.fail")

    def ids(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["jobs"]]

    assert ids(await api.get("/api/jobs?queue=web.list")) == [str(second), str(first)]
    assert ids(await api.get("/api/jobs?queue=web.list&order=asc")) == [str(first), str(second)]
    assert ids(await api.get("/api/jobs?search=lisbon&order=asc")) == [str(first), str(other)]
    assert ids(await api.get("/api/jobs?state=failed")) == [dead]
    assert len(ids(await api.get("/api/jobs?state=created&state=failed"))) == 4
    assert len(ids(await api.get("/api/jobs?state=created,failed&limit=2"))) == 2
    assert ids(await api.get("/api/jobs?since=2999-01-01T00:00:00Z")) == []
    assert len(ids(await api.get("/api/jobs?since=2000-01-01T00:00:00"))) == 4
    page = (await api.get("/api/jobs?limit=1&offset=1&queue=web.list")).json()
    assert (page["limit"], page["offset"]) == (1, 1)
    assert [j["id"] for j in page["jobs"]] == [str(first)]

    job = (await api.get(f"/api/jobs/{first}")).json()
    assert job["data"] == {"city": "Lisbon"} and job["state"] == "created"
    assert job["max_attempts"] == job["retry_limit"] + 1
    assert_error(await api.get(f"/api/jobs/{SOME_ID}"), 404, "JobNotFound")


async def test_job_actions(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    dead = await failed_job(app_async)
    retried = await api.post(f"/api/jobs/{dead}/retry")
    assert retried.status_code == 200 and retried.json()["state"] == "created"
    assert retried.json()["errors"][0]["type"] == "RuntimeError"

    queued = await app_async.send_async("web.q", {"n": 1}, start_after=3600)
    cancelled = await api.post(f"/api/jobs/{queued}/cancel")
    assert cancelled.json()["state"] == "cancelled"

    @app_async.job("web.ok")
    async def ok(job: Job) -> int:
        return 1

    done = await app_async.send_async("web.ok")
    await app_async.drain_async(["web.ok"])
    assert_error(await api.post(f"/api/jobs/{done}/retry"), 409, "JobStateError")
    assert_error(await api.post(f"/api/jobs/{done}/cancel"), 409, "JobStateError")
    assert_error(await api.post(f"/api/jobs/{SOME_ID}/cancel"), 404)

    deleted = await api.delete(f"/api/jobs/{done}")
    assert deleted.json() == {"id": str(done), "deleted": True}
    assert_error(await api.get(f"/api/jobs/{done}"), 404)
    assert_error(await api.delete(f"/api/jobs/{done}"), 404)


async def test_dead_letters(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    a1 = await failed_job(app_async, "web.dead.a", {"n": 1})
    a2 = await app_async.send_async("web.dead.a", {"n": 2})
    await app_async.drain_async(["web.dead.a"])
    b1 = await failed_job(app_async, "web.dead.b")

    listed = (await api.get("/api/dead")).json()["jobs"]
    assert {j["id"] for j in listed} == {a1, str(a2), b1}
    only_b = (await api.get("/api/dead?queue=web.dead.b")).json()["jobs"]
    assert [j["id"] for j in only_b] == [b1]
    assert len((await api.get("/api/dead?limit=1")).json()["jobs"]) == 1

    one = await api.post(f"/api/dead/{b1}/retry")
    assert one.json()["state"] == "created" and one.json()["attempt"] == 0
    assert_error(await api.post(f"/api/dead/{b1}/retry"), 409, "JobStateError")

    every = await api.post("/api/dead/retry", json={"queue": "web.dead.a"})
    assert every.json() == {"queue": "web.dead.a", "retried": 2}
    assert (await api.get("/api/dead")).json()["jobs"] == []

    await app_async.drain_async(["web.dead.a", "web.dead.b"])
    assert len((await api.get("/api/dead")).json()["jobs"]) == 3
    kept = await api.post("/api/dead/purge?older_than=3600")
    assert kept.json() == {"purged": 0}
    purged = await api.post("/api/dead/purge", data={"queue": "web.dead.a"})
    assert purged.json() == {"purged": 2}
    assert [j["id"] for j in (await api.get("/api/dead")).json()["jobs"]] == [b1]
    assert (await api.post("/api/dead/purge")).json() == {"purged": 1}


async def test_schedules_with_their_next_run(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    await app_async.schedule_async("digest", "0 8 * * *", queue="web.s", tz="Europe/Paris")
    await app_async.schedule_async("tick", every=300, queue="web.s")
    found = {s["name"]: s for s in (await api.get("/api/schedules")).json()["schedules"]}
    assert found["digest"]["cron"] == "0 8 * * *" and found["digest"]["tz"] == "Europe/Paris"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT0[67]:00:00\+00:00", found["digest"]["next_run"])
    created = datetime.fromisoformat(found["tick"]["created_at"])
    assert found["tick"]["every"] == 300
    assert datetime.fromisoformat(found["tick"]["next_run"]) == created + timedelta(seconds=300)


async def test_workers_with_their_heartbeat(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/workers")).json() == {"workers": []}

    @app_async.job("web.w")
    async def noop(job: Job) -> None:
        return None

    stop = asyncio.Event()
    running = asyncio.create_task(app_async.run_worker_async(["web.w"], concurrency=3, stop=stop))
    try:
        for _ in range(100):
            workers = (await api.get("/api/workers")).json()["workers"]
            if workers:
                break
            await asyncio.sleep(0.05)
        assert len(workers) == 1
        assert workers[0]["queues"] == ["web.w"] and workers[0]["concurrency"] == 3
        assert workers[0]["heartbeat_at"]
    finally:
        stop.set()
        await running


async def test_the_per_minute_series(app_async: Conveyor, api: httpx.AsyncClient) -> None:
    await failed_job(app_async, "web.series")
    await app_async.send_async("web.series", {})
    response = await api.get("/api/stats/series?queue=web.series&minutes=3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["queue"], body["minutes"]) == ("web.series", 3)
    buckets = body["buckets"]
    assert [set(b) for b in buckets] == [
        {"minute", "completed", "failed", "cancelled", "retried", "wait_p50_ms", "wait_p95_ms",
         "backlog"}
    ] * 3  # fmt: skip
    minutes = [datetime.fromisoformat(b["minute"]) for b in buckets]
    assert [b - a for a, b in itertools.pairwise(minutes)] == [timedelta(minutes=1)] * 2
    assert sum(b["failed"] for b in buckets) == 1
    assert sum(b["completed"] for b in buckets) == 0
    assert sum(b["failed"] for b in (await api.get("/api/stats/series")).json()["buckets"]) == 1
    assert len((await api.get("/api/stats/series")).json()["buckets"]) == 60
    assert_error(await api.get("/api/stats/series?queue=web.none"), 404, "QueueNotFound")
    assert_error(await api.get("/api/stats/series?minutes=0"), 400)
    assert_error(await api.get("/api/stats/series?minutes=1441"), 400)
    assert_error(await api.get("/api/stats/series?minutes=x"), 400)
    assert_error(await api.get("/api/stats/series?since=1"), 400)


async def test_the_overview_makes_a_queue_fair_and_not_and_a_job_page_shows_its_key(
    app_async: Conveyor, browser: httpx.AsyncClient
) -> None:
    job_id = await app_async.send_async("web.tenants", {"n": 1}, fair_key="t-42")
    token = await csrf_of(browser)
    same_origin = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
    for fair in (True, False):
        page = (await browser.get("/")).text
        form = re.search(r'<form[^>]*action="/api/queues/web.tenants/fair".*?</form>', page, re.S)
        assert form is not None, page
        wanted = "true" if fair else "false"  # the button makes it what it is not
        assert f'<input type="hidden" name="fair" value="{wanted}">' in form.group(0)
        assert ("Not fair" if not fair else ">Fair<") in form.group(0)
        # What the form sends: its fields as a JSON body (the dashboard's script) or as a form.
        response = await browser.post(
            "/api/queues/web.tenants/fair",
            json={"fair": wanted},
            headers={**same_origin, "X-CSRF-Token": token},
        )
        assert response.json() == {"queue": "web.tenants", "fair": fair}
        assert (await app_async.get_queue_async("web.tenants")).fair is fair
    detail = (await browser.get(f"/jobs/{job_id}")).text
    assert "<dt>fair_key</dt><dd>t-42</dd>" in detail

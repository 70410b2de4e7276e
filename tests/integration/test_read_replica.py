"""``read_dsn``: inspection reads on a real streaming standby, everything that must be current on
the primary.

The suite starts its own primary and standby (``tests/integration/replica.py``). The proof that a
read went to the standby: replay is paused there, the primary changes, and the read still gives
the old answer; what must be current (a write's answer, ``wait_for``, a refused write's
explanation) gives the new one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from conveyor import Conveyor, Job, JobState
from conveyor.errors import ConfigurationError, InvalidOption, JobNotFound, QueueNotFound
from conveyor.metrics import Metrics
from conveyor.web import create_app
from tests.integration.replica import Pair, binaries, primary_and_standby, server_user

TOKEN = "replica-token"
QUEUE = "replica.q"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    bindir, user = binaries(), server_user()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) installed")
    if user is None:
        pytest.skip("running as root and there is no 'postgres' user to run the servers as")
    with primary_and_standby(bindir, user) as found:
        yield found


@pytest.fixture
def schema(pair: Pair) -> str:
    name = f"replica_{uuid.uuid4().hex[:8]}"
    with Conveyor(pair.primary, schema=name) as app:
        app.migrate()
    return name


@pytest.fixture
def app(pair: Pair, schema: str) -> Iterator[Conveyor]:
    with Conveyor(pair.primary, schema=schema, read_dsn=pair.standby) as found:
        yield found


@pytest.fixture
async def app_async(pair: Pair, schema: str) -> AsyncIterator[Conveyor]:
    async with Conveyor(pair.primary, schema=schema, read_dsn=pair.standby) as found:
        yield found


def test_inspection_reads_see_the_standby_while_what_must_be_current_sees_the_primary(
    app: Conveyor, pair: Pair
) -> None:
    @app.job(QUEUE)
    def double(job: Job) -> int:
        return 2 * int(job.data["n"])

    seen = app.send(QUEUE, {"n": 1}, start_after=3600)
    pair.caught_up()
    assert app.get_job(seen).state is JobState.CREATED
    with pair.replay_paused():
        # A write answers from the primary...
        assert app.cancel(seen).state is JobState.CANCELLED
        # ...the inspection reads from the standby, which has not replayed it.
        assert app.get_job(seen).state is JobState.CREATED
        assert app.list_jobs(QUEUE, "cancelled") == []
        assert app.queue_stats(QUEUE).counts["created"] == 1
        # Cancelling again is explained by the job as the primary has it: cancelled already.
        assert app.cancel(seen).state is JobState.CANCELLED

        # A send's key answer comes from the primary: the standby does not know the job.
        keyed = app.send(QUEUE, {"n": 2}, unique_key="k")
        assert app.send(QUEUE, {"n": 3}, unique_key="k") == keyed
        with pytest.raises(JobNotFound):
            app.get_job(keyed)
        # The worker and wait_for work on the primary.
        assert app.drain() == 1
        assert app.wait_for(keyed, timeout=10).result == 4
        with pytest.raises(JobNotFound):
            app.get_job(keyed)

        app.create_queue("replica.new")
        with pytest.raises(QueueNotFound):
            app.get_queue("replica.new")
        assert "replica.new" not in {q.name for q in app.list_queues()}
        assert app.purge_queue("replica.new") == 0  # its existence checked on the primary
        # A write's answer comes from the primary, the standby's view from the standby.
        assert app.pause_queue(QUEUE).paused
        assert not app.get_queue(QUEUE).paused

        metrics = Metrics(app, cache_seconds=0)
        try:
            body = metrics.render()[0].decode()
        finally:
            metrics.close()
        assert f'conveyor_jobs{{queue="{QUEUE}",state="created"}} 1.0' in body
    pair.caught_up()
    assert app.get_job(seen).state is JobState.CANCELLED
    assert app.get_job(keyed).result == 4
    assert "replica.new" in {q.name for q in app.list_queues()}


async def test_the_dashboard_reads_from_the_standby_and_acts_on_the_primary(
    app_async: Conveyor, pair: Pair
) -> None:
    job_id = await app_async.send_async(QUEUE, {"n": 1}, start_after=3600)
    pair.caught_up()
    web = create_app(app_async, token=TOKEN)
    transport = httpx.ASGITransport(app=web)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as http:
            with pair.replay_paused():
                cancelled = await http.post(f"/api/jobs/{job_id}/cancel")
                assert cancelled.status_code == 200, cancelled.text
                assert cancelled.json()["state"] == "cancelled"
                shown = await http.get(f"/api/jobs/{job_id}")
                assert shown.json()["state"] == "created"
                assert (await app_async.get_job_async(job_id)).state is JobState.CREATED
                queues = (await http.get("/api/queues")).json()["queues"]
                assert [q["stats"]["counts"]["created"] for q in queues if q["name"] == QUEUE] == [
                    1
                ]
                page = await http.get("/metrics")
                assert f'conveyor_jobs{{queue="{QUEUE}",state="created"}} 1.0' in page.text
            pair.caught_up()
            shown = await http.get(f"/api/jobs/{job_id}")
            assert shown.json()["state"] == "cancelled"
    finally:
        web.state.metrics.close()


def test_the_read_dsn_comes_from_the_environment_when_not_given(
    pair: Pair, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_READ_DATABASE_URL", pair.standby)
    with Conveyor(pair.primary, schema=schema) as app, pair.replay_paused():
        job_id = app.send(QUEUE, {"n": 1})
        with pytest.raises(JobNotFound):
            app.get_job(job_id)
    monkeypatch.delenv("CONVEYOR_READ_DATABASE_URL")
    with Conveyor(pair.primary, schema=schema, read_dsn=pair.standby) as app:
        app.use_database(pair.primary)  # another database: the standby is no replica of it
        with pair.replay_paused():
            job_id = app.send(QUEUE, {"n": 1})
            assert app.get_job(job_id).state is JobState.CREATED


def test_a_bad_read_dsn_is_refused() -> None:
    with pytest.raises(InvalidOption, match="read_dsn"):
        Conveyor("postgresql://localhost/db", read_dsn=5)  # type: ignore[arg-type]
    with (
        Conveyor("postgresql://localhost/db", read_dsn="mysql://replica/db") as app,
        pytest.raises(ConfigurationError, match="mysql"),
    ):
        app.list_queues()

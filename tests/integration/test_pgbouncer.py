"""Behind PgBouncer in transaction mode (SPEC §9): jobs go through the bouncer without prepared
statements, LISTEN goes to a direct connection (``listen_dsn``), and without one the worker and
``wait_for`` poll instead of waiting for a NOTIFY that could never come."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from conveyor import Conveyor, Job, JobState

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(
    not os.path.exists(PGBOUNCER), reason="PgBouncer is not installed (.ci/run installs it)"
)


@pytest.fixture
def bouncer(conveyor_dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the test database; its DSN."""
    info = conninfo_to_dict(conveyor_dsn)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    folder = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
    folder.chmod(0o755)
    user = str(info.get("user") or "postgres")
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"bounced = host={info.get('host') or '127.0.0.1'} port={info.get('port') or 5432} "
        f"dbname={info.get('dbname') or 'test'}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder}/users.txt\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    # PgBouncer refuses to run as root; -u drops to the postgres user.
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([PGBOUNCER, *as_user, str(folder / "pgbouncer.ini")])
    dsn = make_conninfo(host="127.0.0.1", port=port, dbname="bounced", user=user)
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=1).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield dsn
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(folder, ignore_errors=True)


def through(bouncer: str, schema: str, listen_dsn: str | None) -> Conveyor:
    app = Conveyor(bouncer, schema=schema, pgbouncer=True, listen_dsn=listen_dsn)

    @app.job("bounced.q")
    async def handler(job: Job) -> int:
        return 2 * int(job.data["n"])

    return app


async def test_work_flows_through_pgbouncer_with_listen_on_a_direct_connection(
    bouncer: str, conveyor_dsn: str, conveyor_schema: str
) -> None:
    app = through(bouncer, conveyor_schema, listen_dsn=conveyor_dsn)
    try:
        # Far more statements than psycopg's prepare threshold, on whichever server connection
        # PgBouncer picks for each transaction.
        ids = [await app.send_async("bounced.q", {"n": n}) for n in range(60)]
        ids += await app.send_batch_async([("bounced.q", {"n": n}) for n in range(60, 200)])
        stop = asyncio.Event()
        worker = asyncio.create_task(app.run_worker_async(concurrency=5, stop=stop))
        done = await app.wait_for_async(ids[-1], timeout=30)
        late = await app.send_async("bounced.q", {"n": 1000})
        started = time.monotonic()
        finished = await app.wait_for_async(late, timeout=30)
        woken_in = time.monotonic() - started
        stop.set()
        await worker
        assert (done.state, finished.result) == (JobState.COMPLETED, 2000)
        assert woken_in < 1.5  # a NOTIFY woke the worker, not its 2 s poll
        jobs = [await app.get_job_async(i) for i in ids]
        assert all(j.state is JobState.COMPLETED for j in jobs)
    finally:
        await app.close_async()


def test_without_a_listen_dsn_the_worker_and_wait_for_poll(
    bouncer: str, conveyor_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = through(bouncer, conveyor_schema, listen_dsn=None)
    try:
        first = app.send("bounced.q", {"n": 1})

        async def serve() -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=2, poll_interval=0.2, stop=stop)
            )
            await asyncio.sleep(0.5)
            later = await app.send_async("bounced.q", {"n": 2})
            done = await app.wait_for_async(later, timeout=10)
            assert done.result == 4
            stop.set()
            await worker
            await app.close_async()

        asyncio.run(serve())
        assert app.wait_for(first, timeout=5).result == 2
        assert "no LISTEN connection" in caplog.text
    finally:
        app.close()

"""Connections that break: a restart or failover (every backend of the app terminated), a
connection cut under a running statement, and a database that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from conveyor import Conveyor
from conveyor.errors import DatabaseUnavailable
from conveyor.web import create_app

TOKEN = "s3cret-token"


def terminate_backends(dsn: str, application_name: str) -> int:
    """Terminate every backend of ``application_name`` and wait until they are gone, as after a
    restart: the server has closed each of those connections before the app uses them again."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                [application_name],
            )
        ]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "backends still there after 10s"
            time.sleep(0.02)
    return len(pids)


def fill_pool(app: Conveyor, n: int) -> None:
    """Open ``n`` pooled connections: ``n`` reads that overlap (each waits for all to start)."""
    barrier = threading.Barrier(n)

    def read(_: int) -> None:
        with app._stores.store().connection() as conn:
            barrier.wait(10)
            conn.execute("SELECT 1")

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(read, range(n)))


def stored(dsn: str, schema: str, marker: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM \"{schema}\".job WHERE data->>'marker' = %s", [marker]
        ).fetchone()
    return int(row[0]) if row else 0


def test_after_every_pooled_connection_was_terminated_no_call_fails(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    fill_pool(app, 6)
    assert terminate_backends(conveyor_dsn, f"conveyor {conveyor_schema}") == 6
    ids = []
    for i in range(8):
        ids.append(app.send("failover.q", {"marker": "restart", "i": i}))
        assert app.get_job(ids[-1]) is not None
    assert app.list_jobs(queue="failover.q", limit=100)
    # Each send stored exactly once.
    assert stored(conveyor_dsn, conveyor_schema, "restart") == 8
    assert len(set(ids)) == 8


async def test_after_every_pooled_connection_was_terminated_no_async_call_fails(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    await asyncio.gather(*(app_async.list_jobs_async(limit=1) for _ in range(6)))
    assert terminate_backends(conveyor_dsn, f"conveyor {conveyor_schema}") >= 1
    for i in range(8):
        job_id = await app_async.send_async("failover.q", {"marker": "restart-async", "i": i})
        assert await app_async.get_job_async(job_id) is not None
    assert stored(conveyor_dsn, conveyor_schema, "restart-async") == 8


class TableLock:
    """A transaction holding the job table in ACCESS EXCLUSIVE mode, so that every statement
    on it waits (where the test can terminate its backend) until it is released."""

    def __init__(self, dsn: str, schema: str) -> None:
        self._conn = psycopg.connect(dsn)
        self._schema = schema

    def take(self) -> None:
        self._conn.execute(f'LOCK TABLE "{self._schema}".job IN ACCESS EXCLUSIVE MODE')

    def release(self) -> None:
        self._conn.commit()


@pytest.fixture
def table_lock(conveyor_dsn: str, conveyor_schema: str) -> Iterator[TableLock]:
    lock = TableLock(conveyor_dsn, conveyor_schema)
    yield lock
    lock.release()
    lock._conn.close()


def waiting_backend(dsn: str, application_name: str, timeout: float = 10) -> int:
    """The pid of the backend of ``application_name`` waiting for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'",
                [application_name],
            ).fetchone()
            if row:
                return int(row[0])
            assert time.monotonic() < deadline, "no backend waiting for the lock"
            time.sleep(0.02)


def terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_read_whose_connection_breaks_under_it_is_repeated_on_a_fresh_one(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str, table_lock: TableLock
) -> None:
    name = f"conveyor {conveyor_schema}"
    table_lock.take()
    with ThreadPoolExecutor(1) as pool:
        try:
            listing = pool.submit(app.list_jobs, queue="failover.q")
            first = waiting_backend(conveyor_dsn, name)
            terminate(conveyor_dsn, first)
            # The read is asked again on another connection, which waits for the lock in turn.
            deadline = time.monotonic() + 10
            while waiting_backend(conveyor_dsn, name) == first:
                assert time.monotonic() < deadline, "the read was not asked again"
                time.sleep(0.02)
        finally:
            table_lock.release()
        assert listing.result(10) == []


def test_a_send_whose_connection_breaks_under_it_is_never_repeated(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str, table_lock: TableLock
) -> None:
    table_lock.take()
    with ThreadPoolExecutor(1) as pool:
        try:
            sending = pool.submit(app.send, "failover.q", {"marker": "cut"})
            terminate(conveyor_dsn, waiting_backend(conveyor_dsn, f"conveyor {conveyor_schema}"))
            with pytest.raises(DatabaseUnavailable, match="terminating connection"):
                sending.result(10)
        finally:
            table_lock.release()
    # Whether it committed is for the caller to find out: it is not sent a second time.
    assert stored(conveyor_dsn, conveyor_schema, "cut") == 0


class Forwarder:
    """A TCP forwarder on a fixed loopback port to the test server, which can be stopped (the
    port refuses connections, open ones are cut) and started again, like a database restart."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown, not only close: a thread blocked in accept() keeps it listening.
                self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def forwarder(conveyor_dsn: str) -> Iterator[tuple[Forwarder, str]]:
    """A forwarder to the test server, and the DSN that goes through it."""
    params = conninfo_to_dict(conveyor_dsn)
    fwd = Forwarder(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    fwd.start()
    yield fwd, make_conninfo(conveyor_dsn, host="127.0.0.1", port=fwd.port)
    fwd.stop()


async def test_the_dashboard_reports_an_outage_within_seconds_and_recovers_when_it_ends(
    forwarder: tuple[Forwarder, str], conveyor_schema: str
) -> None:
    fwd, dsn = forwarder
    async with Conveyor(dsn, schema=conveyor_schema) as app:
        web = create_app(app, token=TOKEN, metrics=False)
        transport = httpx.ASGITransport(app=web)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            assert (await client.get("/api/queues")).status_code == 200
            fwd.stop()
            start = time.monotonic()
            down = await client.get("/api/queues")
            reported_in = time.monotonic() - start
            assert down.status_code == 503
            assert "Connection refused" in down.json()["error"]["message"]
            assert reported_in < 5
            # Down for a while, so that the pool's reconnections back off.
            await asyncio.sleep(3)
            assert (await client.get("/api/queues")).status_code == 503
            fwd.start()
            start = time.monotonic()
            while (await client.get("/api/queues")).status_code != 200:
                assert time.monotonic() - start < 10, "no recovery within 10s"
                await asyncio.sleep(0.1)
            recovered_in = time.monotonic() - start
    print(f"outage reported in {reported_in:.2f}s, recovered in {recovered_in:.2f}s")
    assert recovered_in < 5

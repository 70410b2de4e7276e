"""The admin API fuzzed from its own OpenAPI document (schemathesis): whatever the path, query and
body hold, the server answers with a JSON error or a result, never a 5xx, and stays up."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings

from conveyor import Conveyor
from conveyor.web import create_app
from conveyor.web.openapi import openapi_document

TOKEN = "fuzz-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture
def server(conveyor_dsn: str, conveyor_schema: str) -> Iterator[str]:
    """The dashboard's app served by uvicorn on a free port, with some jobs to act on."""
    app = Conveyor(conveyor_dsn, schema=conveyor_schema)
    app.send_batch([("fuzz.q", {"n": n}) for n in range(5)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = create_app(app, token=TOKEN, metrics=False)
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="off"))
    with start_blocking_portal() as portal:
        serving = portal.start_task_soon(functools.partial(server.serve, sockets=[sock]))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            serving.result(timeout=30)
            portal.call(app.close_async)
            app.close()
            sock.close()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_input_makes_the_api_fail(case: schemathesis.Case, server: str) -> None:
    response = case.call(base_url=server, headers=BEARER)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) >= {"type", "message"}, body
    # Without the token: refused (or, for a method the path does not have, not allowed).
    anonymous = case.call(base_url=server)
    assert anonymous.status_code in (401, 405), (case.method, case.formatted_path)

"""The LISTEN connection ends as soon as it is told to stop, wherever it is waiting."""

from __future__ import annotations

import asyncio
import time

from conveyor._store.listen import Listener


async def test_stop_ends_an_idle_listener_at_once(conveyor_dsn: str, conveyor_schema: str) -> None:
    # A probe interval far longer than the bound: a listener that only looks at ``stop``
    # between probes would take the whole interval to end.
    listener = Listener(
        conveyor_dsn,
        [f"test_{conveyor_schema}"],
        lambda channel, payload: None,
        lambda: None,
        probe_every=30.0,
        application_name=f"conveyor listen {conveyor_schema}",
    )
    stop = asyncio.Event()
    running = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.connected.wait(), 10)
    await asyncio.sleep(0.05)  # inside the wait for notifications

    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(running, 5)
    assert time.monotonic() - started < 0.5
    assert not listener.connected.is_set()


async def test_stop_while_reconnecting_ends_the_backoff_at_once() -> None:
    # Nothing listens on port 1: every attempt fails and the listener backs off.
    listener = Listener(
        "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2",
        ["nowhere"],
        lambda channel, payload: None,
        lambda: None,
        max_backoff=30.0,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(listener.run(stop))
    await asyncio.sleep(0.3)

    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(running, 5)
    assert time.monotonic() - started < 0.5

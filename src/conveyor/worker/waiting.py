"""Waiting for whichever of several things happens first (a stop, a wake-up, a timeout)."""

from __future__ import annotations

import asyncio
from typing import Any


async def first_of(*aws: Any) -> None:
    """Wait until the first of some awaitables finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()

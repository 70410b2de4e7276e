"""A stand-in for the helpdesk's people: every few seconds a customer signs up or opens a ticket,
agents answer and resolve some, and now and then someone asks for an export."""

from __future__ import annotations

import asyncio
import contextlib
import random

from conveyor.demo_app.jobs import app, connect
from conveyor.demo_app.service import Conn, answer, open_ticket, request_export, resolve, sign_up

# Port 9 is the discard service: nothing listens there, so every delivery is refused.
DOWN_WEBHOOK = "http://127.0.0.1:9/insightdesk-webhook"
NAMES = ("Ada", "Grace", "Linus", "Guido", "Barbara", "Ken", "Margaret", "Dennis", "Frances")
SUBJECTS = (
    "Cannot log in",
    "Invoice shows the wrong VAT",
    "Export button does nothing",
    "How do I add a teammate?",
    "Password reset email never arrives",
    "Feature request: dark mode",
    "App is slow since this morning",
)
ANALYST = "alice@insightdesk.example"


async def run(stop: asyncio.Event, interval: float = 2.0, seed: int | None = None) -> None:
    """Make traffic until ``stop`` is set, one round every ``interval`` seconds."""
    rng = random.Random(seed)
    async with await connect() as conn:
        # Acme's webhook endpoint is down: webhooks for their tickets end in the dead letters.
        customers = [await new_customer(conn, rng, "Acme Ops", DOWN_WEBHOOK)]
        await open_ticket(conn, customers[0], "Our webhook endpoint seems unreachable")
        await request_export(ANALYST)
        # The schedules keep their real times (hourly, weekday mornings): run each by hand as
        # well, as an admin would from a button, so their jobs show up within the demo.
        await app.send_async("reports.digest")
        round_number = 0
        while not stop.is_set():
            round_number += 1
            if round_number % 3 == 1:
                customers.append(await new_customer(conn, rng, rng.choice(NAMES)))
            await open_ticket(conn, rng.choice(customers[1:]), rng.choice(SUBJECTS))
            await agents_work(conn, rng)
            if round_number % 15 == 0:
                await request_export(ANALYST)
                await app.send_async("tickets.auto_close")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def new_customer(
    conn: Conn, rng: random.Random, name: str, webhook_url: str | None = None
) -> int:
    email = f"{name.split()[0].lower()}.{rng.getrandbits(32):08x}@customer.example"
    return await sign_up(conn, email, name, webhook_url)


async def agents_work(conn: Conn, rng: random.Random) -> None:
    """Answer one waiting ticket and perhaps resolve one answered ticket: agents keep up with
    most tickets, and the ones they leave waiting breach their SLA."""
    cursor = await conn.execute(
        "SELECT id, first_response_at IS NOT NULL AS answered FROM helpdesk.tickets"
        " WHERE status = 'open' ORDER BY id"
    )
    tickets = await cursor.fetchall()
    waiting = [t["id"] for t in tickets if not t["answered"]]
    answered = [t["id"] for t in tickets if t["answered"]]
    if waiting:
        await answer(conn, rng.choice(waiting))
    if answered and rng.random() < 0.6:
        await resolve(conn, rng.choice(answered))

"""What the helpdesk's web app does when people click: each action writes its rows and sends its
jobs in one transaction, so a job exists if and only if the change it is about was committed."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import DictRow

from conveyor.demo_app.jobs import FIRST_RESPONSE_SLA, RESOLUTION_SLA, app, connect, fetch_one

Conn = psycopg.AsyncConnection[DictRow]

# Every hour, and at 08:00 on weekdays (UTC), as in the seeds.
SCHEDULES = {
    "auto-close-resolved": ("0 * * * *", "tickets.auto_close"),
    "daily-digest": ("0 8 * * 1-5", "reports.digest"),
}
SUBSCRIPTIONS = {
    "user.signed_up": ("email.welcome", "crm.sync"),
    "ticket.created": ("ticket.notify", "ticket.webhook"),
}


async def setup() -> None:
    """Migrate Conveyor's schema, create the helpdesk's tables, and declare the event
    subscriptions and schedules. Safe to run again."""
    await app.migrate_async()
    async with await connect() as conn:
        await conn.execute((Path(__file__).parent / "schema.sql").read_bytes())
    for event, queues in SUBSCRIPTIONS.items():
        for queue in queues:
            await app.subscribe_async(event, queue)
    for name, (cron, queue) in SCHEDULES.items():
        await app.schedule_async(name, cron, queue=queue, tz="UTC")


async def sign_up(conn: Conn, email: str, name: str, webhook_url: str | None = None) -> int:
    """Create a customer; the welcome email and the CRM sync go out once it is committed."""
    async with conn.transaction():
        user = await fetch_one(
            conn,
            "INSERT INTO helpdesk.users (email, name, role, webhook_url)"
            " VALUES (%s, %s, 'customer', %s) RETURNING id",
            email,
            name,
            webhook_url,
        )
        await app.publish_async("user.signed_up", {"user_id": user["id"]}, connection=conn)
    return int(user["id"])


async def open_ticket(conn: Conn, customer_id: int, subject: str) -> int:
    """Open a ticket, assigned to the agent with the fewest open ones; announce it, and set one
    SLA check at each deadline."""
    async with conn.transaction():
        ticket = await fetch_one(
            conn,
            "INSERT INTO helpdesk.tickets (customer_id, subject, assignee_id)"
            " SELECT %s, %s, u.id FROM helpdesk.users u"
            " LEFT JOIN helpdesk.tickets t ON t.assignee_id = u.id AND t.status = 'open'"
            " WHERE u.role = 'agent' GROUP BY u.id ORDER BY count(t.id), u.id LIMIT 1"
            " RETURNING id",
            customer_id,
            subject,
        )
        ticket_id = int(ticket["id"])
        await app.publish_async(
            "ticket.created", {"ticket_id": ticket_id, "kind": "created"}, connection=conn
        )
        await app.send_batch_async(
            [
                ("sla.check", {"ticket_id": ticket_id, "check": "first_response"},
                 {"start_after": FIRST_RESPONSE_SLA}),
                ("sla.check", {"ticket_id": ticket_id, "check": "resolution"},
                 {"start_after": RESOLUTION_SLA}),
            ],
            connection=conn,
        )  # fmt: skip
    return ticket_id


async def answer(conn: Conn, ticket_id: int) -> None:
    """An agent replies: the first reply stops the first-response SLA clock."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE helpdesk.tickets SET first_response_at = coalesce(first_response_at, now())"
            " WHERE id = %s",
            (ticket_id,),
        )
        await app.send_async(
            "ticket.notify", {"ticket_id": ticket_id, "kind": "reply"}, connection=conn
        )


async def resolve(conn: Conn, ticket_id: int) -> None:
    """An agent resolves a ticket; the hourly auto-close closes it later."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE helpdesk.tickets SET status = 'resolved', resolved_at = now(),"
            " first_response_at = coalesce(first_response_at, now())"
            " WHERE id = %s AND status = 'open'",
            (ticket_id,),
        )
        await app.send_async(
            "ticket.notify", {"ticket_id": ticket_id, "kind": "resolved"}, connection=conn
        )


async def request_export(requested_by: str) -> str:
    """Ask for a CSV export of the tickets; ``reports.ready`` mails the requester when it ends."""
    job_id = await app.send_async(
        "reports.export", {"requested_by": requested_by}, on_complete="reports.ready"
    )
    return str(job_id)

"""The helpdesk's background jobs: the pg-boss helpdesk of the seeds, written for Conveyor.

Run a worker for them with ``conveyor worker conveyor.demo_app.jobs:app``, or let ``conveyor
demo`` run everything. Configuration comes from the environment, as in a real
deployment: ``CONVEYOR_DATABASE_URL`` (or ``DATABASE_URL``), ``HELPDESK_SMTP`` (host:port of the
mail server) and ``HELPDESK_REPORTS`` (where exports are written).

Queue map:

- ``user.signed_up`` (event) fans out to ``email.welcome`` and ``crm.sync``;
- ``ticket.created`` (event) fans out to ``ticket.notify`` and ``ticket.webhook``;
- ``sla.check`` jobs are sent with ``start_after`` at ticket creation, one per SLA deadline;
- ``tickets.auto_close`` runs hourly and ``reports.digest`` on weekday mornings (schedules);
- ``reports.export`` writes a CSV and reports its progress; ``reports.ready`` hears the outcome.

Jobs run at least once, so a job may run again after a crash: the SLA check records a breach
with ``ON CONFLICT DO NOTHING`` and warns only when it recorded one, the CRM sync is an
``UPDATE``, the export rewrites its own file; an email may go out twice, the usual price.
"""

from __future__ import annotations

import asyncio
import csv
import getpass
import json
import os
import smtplib
import tempfile
import urllib.request
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from conveyor import Conveyor, Fail, Job

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))

# Demo time runs fast: SLA deadlines are seconds, not hours, so breaches happen while you watch.
FIRST_RESPONSE_SLA = timedelta(seconds=15)
RESOLUTION_SLA = timedelta(seconds=45)
AUTO_CLOSE_AFTER = timedelta(seconds=30)
SENDER = "InsightDesk <noreply@insightdesk.example>"


def database_url() -> str:
    """The same database as Conveyor's: the helpdesk tables live beside the job tables."""
    url = os.environ.get("CONVEYOR_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set CONVEYOR_DATABASE_URL (or DATABASE_URL)")
    return url


async def connect() -> psycopg.AsyncConnection[DictRow]:
    """A connection to the helpdesk database, rows as dicts. In autocommit mode, so that only
    ``conn.transaction()`` blocks group statements, and each commits when it ends."""
    return await psycopg.AsyncConnection.connect(
        database_url(), autocommit=True, row_factory=dict_row
    )


def send_mail(to: str, subject: str, body: str) -> None:
    """Send one plain-text email over SMTP (the demo's mail sink, or a real relay)."""
    host, _, port = os.environ.get("HELPDESK_SMTP", "127.0.0.1:1025").rpartition(":")
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(host, int(port), timeout=10) as smtp:
        smtp.send_message(message)


async def mail(to: str, subject: str, body: str) -> None:
    """:func:`send_mail` without blocking the worker's event loop."""
    await asyncio.to_thread(send_mail, to, subject, body)


async def fetch_one(conn: psycopg.AsyncConnection[DictRow], query: str, *args: Any) -> DictRow:
    """The one row ``query`` finds. None found fails the job at once (:class:`Fail`): a row that
    is gone will not come back on a retry."""
    row = await (await conn.execute(query, args)).fetchone()
    if row is None:
        raise Fail(f"not found: {' '.join(query.split())} {args}")
    return row


TICKET = """
    SELECT t.*, c.email AS customer_email, c.name AS customer_name,
           a.email AS assignee_email, a.name AS assignee_name
    FROM helpdesk.tickets t
    JOIN helpdesk.users c ON c.id = t.customer_id
    LEFT JOIN helpdesk.users a ON a.id = t.assignee_id
    WHERE t.id = %s
"""


# -- sign-up ---------------------------------------------------------------------------------


@app.job("email.welcome", retry_limit=5, retry_delay=2)
async def welcome_email(job: Job) -> dict[str, Any]:
    """Greet a new customer."""
    async with await connect() as conn:
        user = await fetch_one(
            conn, "SELECT * FROM helpdesk.users WHERE id = %s", job.data["user_id"]
        )
    await mail(
        user["email"],
        "Welcome to InsightDesk!",
        f"Hi {user['name']},\n\nyour account is ready. Reply to this email to open a ticket.",
    )
    return {"to": user["email"]}


@app.job("crm.sync", retry_limit=4, retry_delay=1, retry_backoff="fixed")
async def sync_to_crm(job: Job) -> dict[str, Any]:
    """Copy a new customer to the CRM, whose API is flaky: it times out twice for every customer,
    so each of these jobs fails two attempts and completes on the third."""
    if job.attempt < 3:
        raise TimeoutError(f"CRM API timed out (attempt {job.attempt} of {job.max_attempts})")
    async with await connect() as conn:
        await conn.execute(
            "UPDATE helpdesk.users SET crm_synced_at = now() WHERE id = %s", (job.data["user_id"],)
        )
    return {"user_id": job.data["user_id"], "attempts": job.attempt}


# -- tickets ---------------------------------------------------------------------------------

NOTICES = {
    "created": ("customer", "We received your ticket: {subject}", "Ticket #{id} is open."),
    "assigned": ("assignee", "Ticket assigned to you: {subject}", "#{id} from {customer_name}."),
    "reply": ("customer", "New reply on your ticket: {subject}", "An agent answered #{id}."),
    "resolved": ("customer", "Ticket resolved: {subject}", "#{id} is resolved."),
    "closed": ("customer", "Ticket closed: {subject}", "#{id} was closed after resolution."),
    "sla_breach": ("assignee", "SLA breached on ticket: {subject}", "#{id} missed its SLA."),
}


@app.job("ticket.notify", retry_limit=3, retry_delay=2)
async def notify(job: Job) -> dict[str, Any]:
    """Email the customer or the assignee about a ticket; a new ticket tells both."""
    async with await connect() as conn:
        ticket = await fetch_one(conn, TICKET, job.data["ticket_id"])
    kinds = ["created", "assigned"] if job.data["kind"] == "created" else [job.data["kind"]]
    sent = []
    for kind in kinds:
        recipient, subject, body = NOTICES[kind]
        to = ticket[f"{recipient}_email"]
        if to is not None:
            await mail(to, subject.format(**ticket), body.format(**ticket))
            sent.append(to)
    return {"sent": sent}


@app.job("ticket.webhook", retry_limit=2, retry_delay=1, retry_backoff="fixed")
def deliver_webhook(job: Job) -> dict[str, Any]:
    """POST a new ticket to the customer's webhook, if they set one. A plain ``def`` handler: it
    runs in a worker thread. A customer whose endpoint is down ends in the dead letters."""
    with psycopg.connect(database_url(), row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT c.webhook_url FROM helpdesk.tickets t "
            "JOIN helpdesk.users c ON c.id = t.customer_id WHERE t.id = %s",
            (job.data["ticket_id"],),
        ).fetchone()
    url = row["webhook_url"] if row else None
    if url is None:
        return {"delivered": False}
    body = json.dumps({"event": "ticket.created", "ticket_id": job.data["ticket_id"]}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return {"delivered": True, "status": response.status}


@app.job("sla.check", retry_limit=3)
async def check_sla(job: Job) -> dict[str, Any]:
    """Runs at an SLA deadline (sent with ``start_after``): record a breach and warn the assignee
    if the ticket got no first answer, or is still open, by then."""
    ticket_id, kind = job.data["ticket_id"], job.data["check"]
    async with await connect() as conn, conn.transaction():
        ticket = await fetch_one(conn, TICKET, ticket_id)
        if kind == "first_response":
            breached = ticket["first_response_at"] is None
        else:
            breached = ticket["status"] == "open"
        if not breached:
            return {"breached": False}
        recorded = await conn.execute(
            "INSERT INTO helpdesk.sla_breaches (ticket_id, kind) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (ticket_id, kind),
        )
        if recorded.rowcount:
            # Same transaction: the warning is sent if and only if the breach is recorded.
            await app.send_async(
                "ticket.notify", {"ticket_id": ticket_id, "kind": "sla_breach"}, connection=conn
            )
    return {"breached": True}


@app.job("tickets.auto_close")
async def auto_close(job: Job) -> dict[str, Any]:
    """Close tickets resolved for a while (hourly schedule), and tell their customers."""
    async with await connect() as conn, conn.transaction():
        cursor = await conn.execute(
            "UPDATE helpdesk.tickets SET status = 'closed', closed_at = now(), "
            "closed_reason = 'auto_closed_after_resolution' WHERE id IN ("
            "  SELECT id FROM helpdesk.tickets WHERE status = 'resolved' AND resolved_at < %s"
            "  ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED"
            ") RETURNING id",
            (await now(conn) - AUTO_CLOSE_AFTER,),
        )
        closed = [row["id"] for row in await cursor.fetchall()]
        await app.send_batch_async(
            [("ticket.notify", {"ticket_id": t, "kind": "closed"}) for t in closed],
            connection=conn,
        )
    return {"closed": len(closed)}


async def now(conn: psycopg.AsyncConnection[DictRow]) -> Any:
    return (await fetch_one(conn, "SELECT now() AS now"))["now"]


# -- reports ---------------------------------------------------------------------------------


@app.job("reports.digest")
async def daily_digest(job: Job) -> dict[str, Any]:
    """Mail every agent the last day's numbers (weekday schedule)."""
    async with await connect() as conn:
        stats = await fetch_one(
            conn,
            "SELECT count(*) FILTER (WHERE created_at > now() - interval '1 day') AS opened,"
            " count(*) FILTER (WHERE resolved_at > now() - interval '1 day') AS resolved,"
            " count(*) FILTER (WHERE status = 'open') AS still_open,"
            " (SELECT count(*) FROM helpdesk.sla_breaches"
            "   WHERE breached_at > now() - interval '1 day') AS breaches"
            " FROM helpdesk.tickets",
        )
        agents = await (
            await conn.execute("SELECT email, name FROM helpdesk.users WHERE role = 'agent'")
        ).fetchall()
    body = "\n".join(f"{name.replace('_', ' ')}: {value}" for name, value in stats.items())
    for agent in agents:
        await mail(agent["email"], "Daily digest", f"Hi {agent['name']},\n\n{body}")
    return {**stats, "agents": len(agents)}


@app.job("reports.export", retry_limit=1, expire_in=600)
async def export_report(job: Job) -> dict[str, Any]:
    """Write every ticket to a CSV file, reporting progress as it goes."""
    async with await connect() as conn:
        rows = await (
            await conn.execute(
                "SELECT id, subject, status, created_at, first_response_at, resolved_at "
                "FROM helpdesk.tickets ORDER BY id"
            )
        ).fetchall()
    default = Path(tempfile.gettempdir()) / f"insightdesk-reports-{getpass.getuser()}"
    folder = Path(os.environ.get("HELPDESK_REPORTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tickets-{job.id}.csv"
    steps = 10
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["id", "subject", "status", "created_at", "first_response_at", "resolved_at"]
        )
        for step in range(steps):
            chunk = rows[step * len(rows) // steps : (step + 1) * len(rows) // steps]
            writer.writerows(list(row.values()) for row in chunk)
            job.report_progress(100 * (step + 1) / steps, f"{(step + 1) * 10}% of {len(rows)} rows")
            # A real export of a big table takes a while; this one pretends, so the progress bar
            # has time to move on the dashboard.
            await asyncio.sleep(0.3)
    return {"path": str(path), "rows": len(rows), "requested_by": job.data["requested_by"]}


@app.job("reports.ready")
async def report_ready(job: Job) -> dict[str, Any]:
    """Tell whoever asked for an export how it went (the export's ``on_complete`` hook)."""
    outcome = job.data
    to = outcome["data"]["requested_by"]
    if outcome["state"] == "completed":
        result = outcome["result"]
        await mail(to, "Your ticket export is ready", f"{result['rows']} rows in {result['path']}")
    else:
        await mail(to, "Your ticket export failed", f"It ended {outcome['state']}.")
    return {"to": to, "export": outcome["state"]}

"""The same with an async connection: every method has an ``_async`` twin."""

import asyncio
import os

import psycopg

from conveyor import Conveyor


async def main() -> None:
    dsn = os.environ["CONVEYOR_DATABASE_URL"]
    async with (
        Conveyor(dsn, schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor")) as app,
        await psycopg.AsyncConnection.connect(dsn) as conn,
    ):
        async with conn.transaction():
            job_id = await app.send_async(
                "email.welcome", {"to": "ada@example.com"}, connection=conn
            )
            ids = await app.send_batch_async(
                [("audit.log", {"event": "signup"}), ("crm.sync", {"id": 7}, {"priority": 5})],
                connection=conn,
            )
        print(job_id, ids)


asyncio.run(main())

"""The testing plugin's schema per test process: emptied between tests, cheaply, and with nothing
of one test's rows (live or dead) left for the next one's maintenance or doctor to see."""

from __future__ import annotations

import os

import psycopg

from conveyor import Conveyor
from conveyor.testing import IsolatedSchema


def test_a_fresh_schema_keeps_no_row_and_few_dead_ones_of_the_test_before(
    conveyor_dsn: str,
) -> None:
    schema = IsolatedSchema(conveyor_dsn, f"conveyor_isolated_{os.getpid()}")
    try:
        name = schema.fresh()
        with Conveyor(conveyor_dsn, schema=name) as app:
            app.send("few", {})
            app.send_batch([("churned", {"i": i}) for i in range(1500)])
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            # 1,500 dead rows and a live one in the live table, two rows in the queues'.
            conn.execute(f"DELETE FROM {name}.job WHERE queue = 'churned'")
            assert schema.fresh() == name
            tables = conn.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace "
                "AND c.relkind = 'r' AND c.relname NOT IN ('migration', 'archive_partition')",
                (name,),
            ).fetchall()
            for (table,) in tables:
                row = conn.execute(f"SELECT count(*) FROM {name}.{table}").fetchone()
                assert row == (0,), table
            # The dead rows went with the pages that held them.
            size = conn.execute("SELECT pg_relation_size(%s::regclass)", (f"{name}.job",))
            assert size.fetchone() == (0,)
            kept = conn.execute(f"SELECT count(*) FROM {name}.migration").fetchone()
            assert kept is not None and kept[0] > 0
    finally:
        schema.drop()

"""The completion in a SQLAlchemy session's transaction (Django: conveyor.integrations.django's
complete(job) inside transaction.atomic())."""

import os

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from conveyor import Conveyor, Job
from conveyor.integrations.sqlalchemy import complete, send

dsn = os.environ["CONVEYOR_DATABASE_URL"]
schema = os.environ.get("CONVEYOR_SCHEMA", "conveyor")
app = Conveyor(dsn, schema=schema)
engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
with engine.begin() as conn:
    conn.execute(text(f'DROP TABLE IF EXISTS "{schema}".shipments'))
    conn.execute(text(f'CREATE TABLE "{schema}".shipments (order_id int)'))


@app.job("shop.ship")
def ship(job: Job) -> None:
    with Session(engine) as session, session.begin():
        session.execute(text(f'INSERT INTO "{schema}".shipments VALUES (:o)'), job.data)
        send(app, session, "shop.notify", job.data)
        complete(job, session, result="shipped")  # commits with the session, or not at all


job_id = app.send("shop.ship", {"o": 7})
app.drain(["shop.ship"])
assert app.get_job(job_id).result == "shipped"
with engine.begin() as conn:
    conn.execute(text(f'DROP TABLE "{schema}".shipments'))
engine.dispose()
app.close()

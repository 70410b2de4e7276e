"""SQLAlchemy: the job is written on the session's connection, in its transaction."""

import os

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from conveyor import Conveyor
from conveyor.integrations.sqlalchemy import send

dsn = os.environ["CONVEYOR_DATABASE_URL"]
app = Conveyor(dsn, schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))
# SQLAlchemy's psycopg 3 dialect: postgresql+psycopg://...
engine = create_engine(make_url(dsn).set(drivername="postgresql+psycopg"))

with Session(engine) as session, session.begin():
    session.execute(text("SELECT 1"))  # your ORM writes go here
    job_id = send(app, session, "orders.confirm", {"order": 42})

print(app.get_job(job_id).state)  # created
engine.dispose()
app.close()

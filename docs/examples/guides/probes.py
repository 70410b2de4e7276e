"""Health for probes and Prometheus metrics, from Python."""

import os

from conveyor import Conveyor
from conveyor.metrics import Metrics

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))

# What `conveyor health` reports: never raises for an unreachable database, says so.
health = app.health(max_wait=300, min_workers=0)
print(health.ok, health.database, health.schema_current, health.workers, health.problems)
assert health.ok

# Metrics fed by this process's events (install before its worker starts), plus counts read
# from the database at most every 5 s. `conveyor worker --metrics-port 9100` does this for you.
metrics = Metrics(app)
metrics.install()
body, content_type = metrics.render()
assert b"conveyor_workers" in body and content_type.startswith("text/plain")
metrics.close()
app.close()

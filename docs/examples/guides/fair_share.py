"""A fair queue: one tenant's flood does not hold back another tenant's job."""

import os

from conveyor import Conveyor, Job

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))
app.create_queue("exports", fair=True)  # or later: app.update_queue("exports", fair=True)

ran: list[str] = []


@app.job("exports")
def export(job: Job) -> None:
    ran.append(job.fair_key or "")


# Tenant "big" asks for 500 exports, then tenant "small" for one.
app.send_batch([("exports", {"n": n}, {"fair_key": "big"}) for n in range(500)])
app.send("exports", {"n": 0}, fair_key="small")

# One slot and nine claimed ahead: each fetch takes ten jobs, by turns across the keys.
app.drain(concurrency=1, prefetch=9)
print("small's export ran as number", ran.index("small") + 1, "of", len(ran))
assert ran.index("small") < 10  # in the first fetch, not after big's 500

"""Limits that hold across every worker on every host: they live in the database."""

import os

from conveyor import Conveyor, QueuePolicy

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))

app.create_queue("exports", concurrency=2)  # at most 2 running, across all workers
app.create_queue("mailer", rate_limit=(100, 60))  # 100 starts a minute, in bursts of at most 100
app.create_queue("billing", policy="singleton")  # one running at a time
app.create_queue("reindex", policy="short")  # at most one waiting: sends return its id
app.update_queue("exports", concurrency=4)  # takes effect on the next fetch, everywhere

# Serial per key: one customer's jobs run one at a time, in order; customers run in parallel.
for n in range(3):
    app.send("invoices.sync", {"invoice": n}, group_key="customer-42")

first = app.send("reindex", {"doc": 1})
assert app.send("reindex", {"doc": 2}) == first  # the short queue already has one waiting

for queue in app.list_queues():
    print(queue.name, queue.policy, queue.concurrency, queue.rate_limit, queue.rate_interval)
assert app.get_queue("billing").policy is QueuePolicy.SINGLETON
assert app.get_queue("exports").concurrency == 4
print(app.queue_stats("invoices.sync").queued)  # 3
app.close()

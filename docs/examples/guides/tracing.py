"""One trace from the request that sends a job to every attempt that runs it."""

import os

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import Conveyor, Job

# Your exporter here (OTLP, Jaeger, ...); the in-memory one lets this sample check its spans.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
# An app usually calls trace.set_tracer_provider(provider) once, and Conveyor uses it; an app
# can also be given its own:
app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"), tracer_provider=provider)


@app.job("email.welcome")
def welcome(job: Job) -> None:
    print("traceparent of the send:", job.meta and job.meta["traceparent"])


with provider.get_tracer("web").start_as_current_span("POST /signup"):
    app.send("email.welcome", {"to": "ada@example.com"})  # a "send email.welcome" span
app.drain()  # a "process email.welcome" span per attempt, a child of the send's

for span in exporter.get_finished_spans():
    print(f"{span.context.trace_id:032x} {span.name} {dict(span.attributes or {})}")
assert len({span.context.trace_id for span in exporter.get_finished_spans()}) == 1
app.close()

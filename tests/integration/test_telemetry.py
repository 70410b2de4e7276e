"""OpenTelemetry: a send inside a span and the job's run make one trace (the SDK's in-memory
exporter), with the attempt's attributes and error; without a tracer provider, nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import Conveyor, InvalidOption, Job


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A global tracer provider for this test only (OpenTelemetry lets a process set it once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


async def test_a_send_inside_a_span_and_the_jobs_attempts_make_one_trace(
    app_async: Conveyor, spans: InMemorySpanExporter
) -> None:
    @app_async.job("mail", retry_limit=1, retry_delay=0)
    async def mail(job: Job) -> str:
        with trace.get_tracer("handler").start_as_current_span("render"):
            await asyncio.sleep(0)
        if job.attempt == 1:
            raise ValueError("smtp down")
        return "sent"

    with trace.get_tracer("web").start_as_current_span("POST /signup") as request:
        job_id = await app_async.send_async("mail", {"to": "a@b.c"})
    job = await app_async.get_job_async(job_id)
    assert job.meta is not None and job.meta["traceparent"].split("-")[1] == format(
        request.get_span_context().trace_id, "032x"
    )
    await app_async.drain_async()

    finished = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {request.get_span_context().trace_id}
    by_name: dict[str, list[trace.Span]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)  # type: ignore[arg-type]
    (send,) = by_name["send mail"]
    assert send.kind is SpanKind.PRODUCER  # type: ignore[attr-defined]
    assert send.parent.span_id == request.get_span_context().span_id  # type: ignore[attr-defined]
    assert send.attributes["messaging.message.id"] == str(job_id)  # type: ignore[attr-defined]
    first, second = sorted(
        by_name["process mail"], key=lambda s: s.attributes["conveyor.job.attempt"]
    )  # type: ignore[attr-defined]
    for attempt in (first, second):
        assert attempt.kind is SpanKind.CONSUMER  # type: ignore[attr-defined]
        assert attempt.parent.span_id == send.context.span_id  # type: ignore[attr-defined]
        assert attempt.attributes["messaging.destination.name"] == "mail"  # type: ignore[attr-defined]
        assert attempt.attributes["messaging.message.id"] == str(job_id)  # type: ignore[attr-defined]
    assert first.attributes["conveyor.job.outcome"] == "retry"  # type: ignore[attr-defined]
    assert first.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]
    (error,) = first.events  # type: ignore[attr-defined]
    assert (error.name, error.attributes["exception.type"]) == ("exception", "ValueError")
    assert "smtp down" in error.attributes["exception.stacktrace"]
    assert second.attributes["conveyor.job.outcome"] == "completed"  # type: ignore[attr-defined]
    # The handler's own spans are children of its attempt's.
    renders = by_name["render"]
    assert {r.parent.span_id for r in renders} == {first.context.span_id, second.context.span_id}  # type: ignore[attr-defined]


def test_without_a_tracer_provider_jobs_carry_no_trace_context(app: Conveyor) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    with trace.get_tracer("web").start_as_current_span("request"):
        job_id = app.send("mail", {})
    assert app.get_job(job_id).meta is None


def test_an_apps_own_tracer_provider_gets_its_spans(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with Conveyor(conveyor_dsn, schema=conveyor_schema, tracer_provider=provider) as app:
        app.job("q")(lambda job: None)
        app.send("q", {})
        app.drain()
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["process q", "send q"]
    assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 1
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # untouched
    with pytest.raises(InvalidOption, match="tracer_provider"):
        Conveyor(conveyor_dsn, schema=conveyor_schema, tracer_provider="jaeger")

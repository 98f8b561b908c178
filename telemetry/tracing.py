"""OpenTelemetry GenAI client spans for gateway calls.

Exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the
standard OTEL_* variables), and to Langfuse when `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`
and `LANGFUSE_HOST` are set, through a second OTLP exporter on Langfuse's
`/api/public/otel/v1/traces` with basic auth. With neither (and no processor added by a test)
no spans are created at all, so tracing costs nothing when unused.

Our own TracerProvider is used (not the global one) so a host application's tracing setup and
ours never fight over it.

Spans start before a call's outcome is known, so trace sampling (telemetry/sampling.py) happens
at span end: every exporting processor is wrapped in `SampledSpanProcessor`, which passes on
only spans not marked `llmobs.sampling.keep = false`. A dropped span never reaches an exporter.
"""

from __future__ import annotations

import base64
import os
import threading

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Tracer

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_enabled = False
_lock = threading.Lock()
_configured = False

KEEP_ATTRIBUTE = "llmobs.sampling.keep"
REASON_ATTRIBUTE = "llmobs.sampling.reason"


class SampledSpanProcessor(SpanProcessor):
    """Forwards to `delegate` every span except those the gateway marked as dropped. Spans
    without the attribute (not ended by the gateway) are kept: only an explicit decision drops."""

    def __init__(self, delegate: SpanProcessor) -> None:
        self.delegate = delegate

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.delegate.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes
        if attributes is not None and attributes.get(KEEP_ATTRIBUTE) is False:
            return
        self.delegate.on_end(span)

    def shutdown(self) -> None:
        self.delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)


def _configure() -> None:
    global _configured, _provider, _tracer, _enabled
    with _lock:
        if _configured:
            return
        _provider = TracerProvider(
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "llmobs-gateway")})
        )
        _tracer = _provider.get_tracer("llmobs.gateway")
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(SampledSpanProcessor(BatchSpanProcessor(OTLPSpanExporter())))
            _enabled = True
        public, secret, host = (
            os.environ.get("LANGFUSE_PUBLIC_KEY"),
            os.environ.get("LANGFUSE_SECRET_KEY"),
            os.environ.get("LANGFUSE_HOST"),
        )
        if public and secret and host:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            auth = base64.b64encode(f"{public}:{secret}".encode()).decode()
            exporter = OTLPSpanExporter(
                endpoint=host.rstrip("/") + "/api/public/otel/v1/traces", headers={"Authorization": f"Basic {auth}"}
            )
            _provider.add_span_processor(SampledSpanProcessor(BatchSpanProcessor(exporter)))
            _enabled = True
        _configured = True


def add_span_processor(processor: SpanProcessor, *, sampled: bool = True) -> None:
    """Attach another processor (tests use an in-memory exporter) and enable spans. It sees
    only kept spans, like the exporters, unless `sampled=False`."""
    global _enabled
    _configure()
    assert _provider is not None
    _provider.add_span_processor(SampledSpanProcessor(processor) if sampled else processor)
    _enabled = True


def tracer() -> Tracer | None:
    """The gateway tracer, or None when no exporter is configured."""
    if not _configured:
        _configure()
    return _tracer if _enabled else None


def start_client_span(*, operation: str, provider: str, request_model: str):
    t = tracer()
    if t is None:
        return None
    return t.start_span(
        f"{operation} {request_model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": request_model,
        },
    )


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()

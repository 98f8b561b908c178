"""OpenTelemetry GenAI client spans for gateway calls.

Exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the
standard OTEL_* variables), and to Langfuse when `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`
and `LANGFUSE_HOST` are set, through a second OTLP exporter on Langfuse's
`/api/public/otel/v1/traces` with basic auth. With neither (and no processor added by a test)
no spans are created at all, so tracing costs nothing when unused.

Our own TracerProvider is used (not the global one) so a host application's tracing setup and
ours never fight over it.
"""

from __future__ import annotations

import base64
import os
import threading

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Tracer

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_enabled = False
_lock = threading.Lock()
_configured = False


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

            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
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
            _provider.add_span_processor(BatchSpanProcessor(exporter))
            _enabled = True
        _configured = True


def add_span_processor(processor: SpanProcessor) -> None:
    """Attach another processor (tests use an in-memory exporter) and enable spans."""
    global _enabled
    _configure()
    assert _provider is not None
    _provider.add_span_processor(processor)
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

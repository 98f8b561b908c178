"""POST /v1/traces: the official OpenTelemetry OTLP/HTTP exporter against a live server, OTLP/JSON
posted by hand, partial success, and every refusal."""

from __future__ import annotations

import gzip
from decimal import Decimal

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from chargeback.keys import create_api_key
from telemetry import ingest
from telemetry.models import UsageEvent

URL = "/v1/traces"


@pytest.fixture(autouse=True)
def fresh_department_cache():
    ingest.clear_department_cache()
    yield
    ingest.clear_department_cache()


@pytest.fixture
def token(acme, research_dept, sales_dept):
    return create_api_key(tenant=acme, name="otel")[1]


def record_spans(resource: dict[str, str]):
    """Finished SDK spans: two model calls (current and older conventions), a failed call, a
    tool span and a plain HTTP span."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("llm-app")
    with tracer.start_as_current_span("POST /answer", kind=SpanKind.SERVER):
        with tracer.start_as_current_span(
            "chat gpt-4o",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.cache_read.input_tokens": 400,
                "gen_ai.usage.output_tokens": 200,
                "gen_ai.usage.reasoning.output_tokens": 50,
                "gen_ai.conversation.id": "conv-1",
                "user.id": "alice",
                "llmobs.feature": "answers",
                "llmobs.tag.env": "prod",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "chat claude",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4",
                "gen_ai.usage.prompt_tokens": 100,
                "gen_ai.usage.completion_tokens": 20,
                "gen_ai.usage.cache_creation_input_tokens": 300,
                "llmobs.department": "sales",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o failed", kind=SpanKind.CLIENT, attributes={"gen_ai.operation.name": "chat"}
        ) as span:
            span.set_attribute("gen_ai.provider.name", "openai")
            span.set_attribute("gen_ai.request.model", "gpt-4o")
            span.set_attribute("error.type", "RateLimitError")
            span.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
        with tracer.start_as_current_span(
            "execute_tool search",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.provider.name": "openai"},
        ):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def exporter(live_server, token, **kwargs) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=f"{live_server.url}{URL}", headers={"Authorization": f"Bearer {token}"}, timeout=10, **kwargs
    )


def test_official_exporter_round_trip_over_protobuf(live_server, token, acme, research_dept, sales_dept, gpt4o_price):
    spans = record_spans({"service.name": "answers", "llmobs.department": "research"})
    assert exporter(live_server, token).export(spans) == SpanExportResult.SUCCESS

    rows = {row.span_id: row for row in UsageEvent.objects.filter(tenant=acme)}
    assert len(rows) == 3  # the tool span and the HTTP span are not model calls
    by_name = {span.name: span for span in spans}
    chat = by_name["chat gpt-4o"]
    trace_hex = f"{chat.context.trace_id:032x}"
    span_hex = f"{chat.context.span_id:016x}"
    row = rows[span_hex]
    assert row.event_id == trace_hex + span_hex
    assert row.source == UsageEvent.Source.OTLP
    assert (row.trace_id, row.parent_span_id) == (trace_hex, f"{chat.parent.span_id:016x}")
    assert (row.provider, row.model, row.requested_model, row.operation) == ("openai", "gpt-4o", "gpt-4o", "chat")
    assert (row.input_tokens, row.cache_read_input_tokens, row.output_tokens, row.reasoning_tokens) == (
        1000,
        400,
        200,
        50,
    )
    assert row.department_id == research_dept.pk  # from the resource attribute
    assert (row.user_ref, row.session_id, row.feature, row.tags) == ("alice", "conv-1", "answers", {"env": "prod"})
    assert row.status == "ok"
    assert row.latency_ms == (chat.end_time - chat.start_time) // 1_000_000
    # 600 uncached × 2.50 + 400 cached × 1.25 + 200 output × 10.00, per million.
    assert (row.cost, row.cost_provenance) == (Decimal("0.004"), "computed")

    older = rows[f"{by_name['chat claude'].context.span_id:016x}"]
    assert (older.provider, older.model, older.department_id) == ("anthropic", "claude-sonnet-4", sales_dept.pk)
    # The exclusive Anthropic-style input (100 < 300 cache writes) is made inclusive.
    assert (older.input_tokens, older.cache_creation_input_tokens, older.output_tokens) == (400, 300, 20)
    assert (older.cost, older.cost_provenance) == (None, "unpriced")

    failed = rows[f"{by_name['chat gpt-4o failed'].context.span_id:016x}"]
    assert (failed.status, failed.error_type) == ("error", "RateLimitError")


def test_re_exported_spans_are_duplicates(live_server, token, acme):
    spans = record_spans({"llmobs.department": "research"})
    assert exporter(live_server, token).export(spans) == SpanExportResult.SUCCESS
    assert exporter(live_server, token).export(spans) == SpanExportResult.SUCCESS
    assert UsageEvent.objects.filter(tenant=acme).count() == 3


def test_official_exporter_with_gzip(live_server, token, acme):
    spans = record_spans({"llmobs.department": "research"})
    assert exporter(live_server, token, compression=Compression.Gzip).export(spans) == SpanExportResult.SUCCESS
    assert UsageEvent.objects.filter(tenant=acme, source="otlp").count() == 3


def test_official_exporter_with_a_bad_key_fails_and_writes_nothing(live_server, db):
    spans = record_spans({"llmobs.department": "research"})
    assert exporter(live_server, "llmo_deadbeef_nope").export(spans) == SpanExportResult.FAILURE
    assert UsageEvent.objects.count() == 0


# --- OTLP/JSON and hand-built protobuf through the test client -------------------------------------

TRACE = "5b8efff798038103d269b633813fc60c"


def json_span(span_id: str, attributes: dict, **extra) -> dict:
    def value(v):
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}  # OTLP/JSON writes int64 as strings
        return {"stringValue": v}

    return {
        "traceId": TRACE,
        "spanId": span_id,
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": "1740830400000000000",
        "endTimeUnixNano": "1740830401250000000",
        "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()],
        **extra,
    }


def json_request(spans: list[dict], resource: dict | None = None) -> bytes:
    resource_attributes = [{"key": k, "value": {"stringValue": v}} for k, v in (resource or {}).items()]
    return orjson.dumps(
        {"resourceSpans": [{"resource": {"attributes": resource_attributes}, "scopeSpans": [{"spans": spans}]}]}
    )


GOOD = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 10,
    "gen_ai.usage.output_tokens": 5,
}


def post(client, token, body: bytes, content_type: str, **headers):
    return client.post(URL, data=body, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {token}", **headers)


def test_json_export_with_partial_success(client, token, acme, research_dept):
    body = json_request(
        [
            json_span("eee19b7ec3c1b174", GOOD),
            json_span("eee19b7ec3c1b175", {**GOOD, "llmobs.department": "reserch"}),
            json_span("eee19b7ec3c1b176", {**GOOD, "gen_ai.usage.output_tokens": -3}),
            json_span("eee19b7ec3c1b177", {"http.method": "GET"}),
        ],
        resource={"llmobs.department": "research"},
    )
    response = post(client, token, body, "application/json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "span eee19b7ec3c1b175" in partial["errorMessage"]
    assert "llmobs.department: Unknown department 'reserch'." in partial["errorMessage"]
    assert "attributes.gen_ai.usage.output_tokens: must not be negative." in partial["errorMessage"]
    row = UsageEvent.objects.get()
    assert row.event_id == TRACE + "eee19b7ec3c1b174"
    assert row.latency_ms == 1250
    assert row.occurred_at.isoformat() == "2025-03-01T12:00:00+00:00"


def test_fully_accepted_json_export_has_no_partial_success(client, token, research_dept):
    response = post(
        client,
        token,
        json_request([json_span("eee19b7ec3c1b174", GOOD)], {"llmobs.department": "research"}),
        "application/json",
    )
    assert response.status_code == 200
    assert response.json() == {}


def protobuf_request(*spans: Span, resource: dict | None = None) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={
                    "attributes": [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (resource or {}).items()]
                },
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )
    return request.SerializeToString()


def pb_span(span_id: bytes, attributes: dict) -> Span:
    def value(v):
        return AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v)

    return Span(
        trace_id=bytes.fromhex(TRACE),
        span_id=span_id,
        name="chat",
        start_time_unix_nano=1740830400000000000,
        end_time_unix_nano=1740830400500000000,
        attributes=[KeyValue(key=k, value=value(v)) for k, v in attributes.items()],
    )


def test_protobuf_partial_success_is_answered_in_protobuf(client, token, acme, research_dept):
    body = protobuf_request(
        pb_span(b"\x00\x00\x00\x00\x00\x00\x00\x01", GOOD),
        pb_span(b"\x00\x00\x00\x00\x00\x00\x00\x02", {**GOOD, "gen_ai.request.model": ""}),
        resource={"llmobs.department": "research"},
    )
    response = post(client, token, body, "application/x-protobuf", HTTP_ACCEPT="application/x-protobuf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "span 0000000000000002" in answer.partial_success.error_message
    assert "gen_ai.response.model/gen_ai.request.model: must not be empty." in answer.partial_success.error_message
    assert UsageEvent.objects.get().event_id == TRACE + "0000000000000001"


def test_key_bound_department_applies_to_spans(client, acme, sales_dept, research_dept):
    _, token = create_api_key(tenant=acme, name="bound", department=sales_dept)
    response = post(client, token, protobuf_request(pb_span(b"\x01" * 8, GOOD)), "application/x-protobuf")
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 0
    assert UsageEvent.objects.get().department_id == sales_dept.pk


def test_spans_without_a_department_are_rejected_not_guessed(client, token):
    response = post(client, token, protobuf_request(pb_span(b"\x01" * 8, GOOD)), "application/x-protobuf")
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "llmobs.department: is required." in answer.partial_success.error_message
    assert UsageEvent.objects.count() == 0


def test_gzip_request_body(client, token, research_dept):
    body = gzip.compress(protobuf_request(pb_span(b"\x02" * 8, GOOD), resource={"llmobs.department": "research"}))
    response = post(client, token, body, "application/x-protobuf", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    assert UsageEvent.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status", "fragment"),
    [
        (b"\xff\xff\xff", "application/x-protobuf", {}, 400, "not an OTLP ExportTraceServiceRequest"),
        (b"{nope", "application/json", {}, 400, "not valid JSON"),
        (b'{"resourceSpans": 3}', "application/json", {}, 400, "resourceSpans must be an array"),
        (b"x", "text/plain", {}, 415, "Content-Type 'text/plain' is not supported"),
        (b"x", "application/x-protobuf", {"HTTP_CONTENT_ENCODING": "br"}, 415, "Content-Encoding 'br'"),
        (b"not gzip", "application/x-protobuf", {"HTTP_CONTENT_ENCODING": "gzip"}, 400, "gzip body is corrupt"),
    ],
)
def test_undecodable_requests_are_refused(client, token, body, content_type, headers, status, fragment):
    response = post(client, token, body, content_type, **headers)
    assert response.status_code == status
    if response["Content-Type"] == "application/json":
        assert fragment in response.json()["message"]
    else:
        from google.rpc.status_pb2 import Status as RpcStatus

        assert fragment in RpcStatus.FromString(response.content).message
    assert UsageEvent.objects.count() == 0


def test_gzip_bomb_is_413(client, token, settings):
    settings.LLMOBS_INGEST_MAX_BODY_BYTES = 10_000
    body = gzip.compress(b"\x00" * 1_000_000)
    assert len(body) < 10_000
    response = post(client, token, body, "application/x-protobuf", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413


def test_missing_key_is_401(client, db):
    response = client.post(
        URL, data=protobuf_request(pb_span(b"\x01" * 8, GOOD)), content_type="application/x-protobuf"
    )
    assert response.status_code == 401
    assert UsageEvent.objects.count() == 0


def test_over_rate_limit_is_429(client, acme, research_dept):
    from django.core.cache import cache

    cache.clear()
    _, token = create_api_key(tenant=acme, name="limited", rpm_limit=1)
    body = protobuf_request(pb_span(b"\x03" * 8, GOOD), resource={"llmobs.department": "research"})
    assert post(client, token, body, "application/x-protobuf").status_code == 200
    response = post(client, token, body, "application/x-protobuf", HTTP_ACCEPT="application/x-protobuf")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1


def test_httpx_json_against_live_server(live_server, token, acme, research_dept):
    body = json_request([json_span("aaaaaaaaaaaaaaaa", GOOD)], {"llmobs.department": "research"})
    response = httpx.post(
        f"{live_server.url}{URL}",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {}
    assert UsageEvent.objects.filter(tenant=acme, source="otlp").count() == 1

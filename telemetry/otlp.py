"""OTLP/HTTP trace ingest: OpenTelemetry GenAI spans become usage events.

Both OTLP encodings are read (binary protobuf, the exporters' default, and JSON with hex ids),
optionally gzip-compressed. A span is a model call when it carries GenAI attributes
(`gen_ai.operation.name`, `gen_ai.provider.name` or the older `gen_ai.system`) and is not an
agent or tool span: `invoke_agent` / `create_agent` / `execute_tool` spans wrap the model calls
beneath them, so counting their usage too would bill the same tokens twice. Everything else is
ignored, not rejected. Model-call spans go through the same validation, pricing and idempotent
writer as the JSON ingest API (`event_id` = trace id + span id, so a re-exported span is a
duplicate, never a second charge).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from chargeback.usage import UsageError, from_otel
from telemetry import ingest
from telemetry.models import UsageEvent

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NOT_MODEL_CALLS = frozenset({"invoke_agent", "create_agent", "execute_tool"})
STATUS_ERROR = 2
DEPARTMENT_ATTRIBUTES = ("llmobs.department", "department")
USER_ATTRIBUTES = ("user.id", "enduser.id")
SESSION_ATTRIBUTES = ("session.id", "gen_ai.conversation.id")
FEATURE_ATTRIBUTES = ("llmobs.feature",)
TAG_PREFIX = "llmobs.tag."
MAX_MESSAGES = 10  # error_message lists the first few rejected spans, then a count


class OtlpError(Exception):
    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Span:
    """The parts of an OTLP span (and its resource) that a usage event needs."""

    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ExportResult:
    accepted: int
    duplicates: int
    rejected_spans: int
    error_message: str


# --- Decoding --------------------------------------------------------------------------------------


def decompress(body: bytes, *, encoding: str, limit: int) -> bytes:
    """The request body without its Content-Encoding; bounded so a gzip bomb cannot exhaust memory."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise OtlpError(f"Content-Encoding {encoding!r} is not supported (use gzip or none).", status=415)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpError(f"The gzip body is corrupt: {exc}.") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise OtlpError(f"The decompressed body exceeds {limit} bytes.", status=413)
    return data


def decode(body: bytes, *, content_type: str) -> list[Span]:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == PROTOBUF:
        return list(_spans_from_protobuf(body))
    if kind == JSON:
        return list(_spans_from_json(body))
    raise OtlpError(f"Content-Type {kind or '(none)'!r} is not supported; use {PROTOBUF} or {JSON}.", status=415)


def _pb_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which in ("string_value", "int_value", "double_value", "bool_value"):
        return getattr(value, which)
    return None  # arrays, maps and bytes carry nothing a usage event uses


def _pb_attributes(attributes: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in attributes}


def _spans_from_protobuf(body: bytes) -> Iterable[Span]:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise OtlpError(f"The body is not an OTLP ExportTraceServiceRequest: {exc}.") from None
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield Span(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status_code=span.status.code,
                    status_message=span.status.message,
                    attributes=_pb_attributes(span.attributes),
                    resource=resource,
                )


def _json_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        # OTLP/JSON writes int64 as a decimal string.
        raw = value["intValue"]
        try:
            return int(raw)
        except (TypeError, ValueError):
            return raw
    if "doubleValue" in value:
        return value["doubleValue"]
    if "boolValue" in value:
        return value["boolValue"]
    return None


def _json_attributes(attributes: Any) -> dict[str, Any]:
    if not isinstance(attributes, list):
        return {}
    return {kv["key"]: _json_value(kv.get("value")) for kv in attributes if isinstance(kv, dict) and "key" in kv}


def _json_int(value: Any, name: str) -> int:
    if value is None:
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OtlpError(f"{name}: {str(value)[:40]!r} is not an integer.") from None
    if number < 0:
        raise OtlpError(f"{name}: must not be negative.")
    return number


def _json_status(value: Any) -> int:
    code = value.get("code", 0) if isinstance(value, dict) else 0
    if isinstance(code, str):  # some writers use the enum name
        return STATUS_ERROR if code.upper() in ("STATUS_CODE_ERROR", "ERROR") else 0
    return code if isinstance(code, int) else 0


def _spans_from_json(body: bytes) -> Iterable[Span]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OtlpError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(request, dict) or not isinstance(request.get("resourceSpans", []), list):
        raise OtlpError("The body is not an OTLP ExportTraceServiceRequest (resourceSpans must be an array).")
    for resource_spans in request.get("resourceSpans", []):
        if not isinstance(resource_spans, dict):
            raise OtlpError("resourceSpans: every entry must be an object.")
        resource = _json_attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in (scope_spans or {}).get("spans") or []:
                if not isinstance(span, dict):
                    raise OtlpError("spans: every entry must be an object.")
                status = span.get("status")
                yield Span(
                    trace_id=str(span.get("traceId") or "").lower(),
                    span_id=str(span.get("spanId") or "").lower(),
                    parent_span_id=str(span.get("parentSpanId") or "").lower(),
                    start_ns=_json_int(span.get("startTimeUnixNano"), "startTimeUnixNano"),
                    end_ns=_json_int(span.get("endTimeUnixNano"), "endTimeUnixNano"),
                    status_code=_json_status(status),
                    status_message=str((status or {}).get("message") or "") if isinstance(status, dict) else "",
                    attributes=_json_attributes(span.get("attributes")),
                    resource=resource,
                )


# --- Mapping ---------------------------------------------------------------------------------------


def _first(span: Span, names: Iterable[str]) -> Any:
    """The first attribute present on the span, then on its resource."""
    for source in (span.attributes, span.resource):
        for name in names:
            value = source.get(name)
            if value is not None and value != "":
                return value
    return None


def _text(value: Any) -> Any:
    # Ids are often numbers in attributes (user.id = 42); strings are what we store.
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def is_model_call(span: Span) -> bool:
    attributes = span.attributes
    operation = attributes.get("gen_ai.operation.name")
    if operation is None and attributes.get("gen_ai.provider.name") is None and attributes.get("gen_ai.system") is None:
        return False
    return operation not in NOT_MODEL_CALLS


def span_to_event(span: Span) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """A model-call span → (event object for `ingest.validate_event`, {}) or (None, errors)."""
    attributes = span.attributes
    if len(span.trace_id) != 32 or len(span.span_id) != 16:
        return None, {"traceId/spanId": ["must be 16-byte and 8-byte ids (32 and 16 hex characters in JSON)."]}
    try:
        usage = from_otel(attributes)
    except UsageError as exc:
        return None, {f"attributes.{exc.field}": [exc.message]}
    if not span.start_ns:
        return None, {"startTimeUnixNano": ["is required."]}
    started = datetime.fromtimestamp(span.start_ns // 1_000_000_000, tz=UTC).replace(
        microsecond=(span.start_ns % 1_000_000_000) // 1000
    )
    error_type = attributes.get("error.type")
    failed = span.status_code == STATUS_ERROR or error_type is not None
    event: dict[str, Any] = {
        "event_id": f"{span.trace_id}{span.span_id}",
        "timestamp": started,
        "provider": _first(span, ("gen_ai.provider.name", "gen_ai.system")),
        "model": attributes.get("gen_ai.response.model") or attributes.get("gen_ai.request.model"),
        "operation": attributes.get("gen_ai.operation.name") or "chat",
        "usage": usage,
        "status": "error" if failed else "ok",
        "trace_id": span.trace_id,
        "span_id": span.span_id,
    }
    if span.parent_span_id:
        event["parent_span_id"] = span.parent_span_id
    requested = attributes.get("gen_ai.request.model")
    if requested:
        event["requested_model"] = requested
    if span.end_ns >= span.start_ns and span.end_ns:
        event["latency_ms"] = (span.end_ns - span.start_ns) // 1_000_000
    if failed:
        event["error_type"] = str(error_type or span.status_message or "error")[:128]
    for name, candidates in (
        ("department", DEPARTMENT_ATTRIBUTES),
        ("user", USER_ATTRIBUTES),
        ("session_id", SESSION_ATTRIBUTES),
        ("feature", FEATURE_ATTRIBUTES),
    ):
        value = _first(span, candidates)
        if value is not None:
            event[name] = _text(value)
    tags = {
        name[len(TAG_PREFIX) :]: _text(value)
        for source in (span.resource, attributes)
        for name, value in source.items()
        if name.startswith(TAG_PREFIX) and value is not None
    }
    if tags:
        event["tags"] = tags
    return event, {}


# --- The domain entry point ----------------------------------------------------------------------


def record_spans(*, key: Any, spans: list[Span]) -> ExportResult:
    """Store the model-call spans of one export as usage events of the key's tenant."""
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    rejected = 0
    for span in spans:
        if not is_model_call(span):
            continue
        event, errors = span_to_event(span)
        if event is None:
            rejected += 1
            problems.append(_describe(span, errors))
        else:
            events.append(event)
    if len(events) > ingest.MAX_EVENTS_PER_BATCH:
        raise OtlpError(
            f"An export holds at most {ingest.MAX_EVENTS_PER_BATCH} GenAI spans; this one has {len(events)}.",
            status=413,
        )
    accepted = duplicates = 0
    if events:
        result = ingest.record_batch(key=key, items=events, source=UsageEvent.Source.OTLP)
        accepted, duplicates = result.accepted, result.duplicates
        rejected += len(result.rejected)
        for rejection in result.rejected:
            problems.append(_describe_event(events[rejection.index], rejection.errors))
    message = ""
    if problems:
        message = "; ".join(problems[:MAX_MESSAGES])
        if len(problems) > MAX_MESSAGES:
            message += f"; and {len(problems) - MAX_MESSAGES} more rejected span(s)"
    return ExportResult(accepted, duplicates, rejected, message)


def _describe(span: Span, errors: Mapping[str, list[str]]) -> str:
    field, messages = next(iter(errors.items()))
    return f"span {span.span_id or '?'} (trace {span.trace_id or '?'}): {field}: {messages[0]}"


# Event fields named the way an OTLP sender knows them.
ATTRIBUTE_NAMES = {
    "provider": "gen_ai.provider.name",
    "model": "gen_ai.response.model/gen_ai.request.model",
    "department": "llmobs.department",
    "user": "user.id",
    "session_id": "session.id/gen_ai.conversation.id",
    "feature": "llmobs.feature",
    "timestamp": "startTimeUnixNano",
}


def _describe_event(event: Mapping[str, Any], errors: Mapping[str, list[str]]) -> str:
    field, messages = next(iter(errors.items()))
    field = ATTRIBUTE_NAMES.get(field, field)
    return f"span {event.get('span_id') or '?'} (trace {event.get('trace_id') or '?'}): {field}: {messages[0]}"


def encode_response(result: ExportResult, *, content_type: str) -> bytes:
    """An ExportTraceServiceResponse in the request's encoding; partial_success only when
    something was rejected, as the OTLP specification asks."""
    if content_type == PROTOBUF:
        response = ExportTraceServiceResponse()
        if result.rejected_spans or result.error_message:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=result.rejected_spans, error_message=result.error_message)
            )
        return response.SerializeToString()
    body: dict[str, Any] = {}
    if result.rejected_spans or result.error_message:
        body["partialSuccess"] = {"rejectedSpans": str(result.rejected_spans), "errorMessage": result.error_message}
    return orjson.dumps(body)


def encode_error(message: str, *, status: int, content_type: str) -> bytes:
    """A google.rpc.Status body, as OTLP/HTTP servers answer failed requests."""
    if content_type == PROTOBUF:
        from google.rpc.status_pb2 import Status

        return Status(code=_grpc_code(status), message=message).SerializeToString()
    return orjson.dumps({"code": _grpc_code(status), "message": message})


def _grpc_code(status: int) -> int:
    # google.rpc.Code: INVALID_ARGUMENT 3, UNAUTHENTICATED 16, RESOURCE_EXHAUSTED 8, UNIMPLEMENTED 12.
    return {400: 3, 401: 16, 413: 8, 415: 12, 429: 8}.get(status, 2)

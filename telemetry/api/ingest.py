"""Ingest endpoints: `POST /api/v1/usage-events` (JSON events) and `POST /v1/traces` (OTLP/HTTP).

DRF does authentication (Bearer API key), the per-key rate limit, routing and the OpenAPI
description; the events themselves never go through a serializer. The serializers below only
describe the contract for the schema. Views read the body, call one domain function
(`ingest.record_batch`, `otlp.record_spans`) and format the answer.
"""

from __future__ import annotations

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from chargeback.auth import ApiKeyAuthentication, bearer_token
from llmobs.errors import error_body
from telemetry import ingest, otlp
from telemetry.ratelimit import ApiKeyRateThrottle

JSON_TYPE = "application/json"


class BodyTooLarge(Exception):
    pass


def max_body_bytes() -> int:
    return min(settings.LLMOBS_INGEST_MAX_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def read_body(request) -> bytes:
    """The raw body, refusing anything over the ingest size limit before reading it."""
    limit = max_body_bytes()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise BodyTooLarge
    try:
        body = request.body
    except RequestDataTooBig:
        raise BodyTooLarge from None
    if len(body) > limit:
        raise BodyTooLarge
    return body


def _json(body: dict, status: int) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type=JSON_TYPE)


class SenderAuthentication(ApiKeyAuthentication):
    """The Bearer API key, looked up with `ingest.find_sender` (one narrow query);
    `request.auth` is an `ingest.Sender`."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        token = bearer_token(header)
        if token is None:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <api key>'.")
        sender = ingest.find_sender(token)
        if sender is None:
            raise exceptions.AuthenticationFailed("The API key is unknown or has been revoked.")
        return SenderUser(sender), sender


class SenderUser:
    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    pk = None

    def __init__(self, sender: ingest.Sender) -> None:
        self.sender = sender

    def __str__(self) -> str:
        return f"api-key:{self.sender.prefix}"


class AnyAccept(BaseContentNegotiation):
    """Ingest answers in one encoding whatever the Accept header says (JSON, or for OTLP the
    request's Content-Type, e.g. `Accept: application/x-protobuf` from the exporters), so Accept
    never turns into a 406; and no parsing of it per request."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class IngestView(APIView):
    authentication_classes = [SenderAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes = [ApiKeyRateThrottle]
    # The views read the raw body and build their own answers; DRF renders only its errors
    # (401, 429). One renderer, no parsers and no Accept negotiation: ~0.1 ms of the ~1 ms of
    # Python a single event costs (docs/PERFORMANCE.md "Ingest").
    renderer_classes = [JSONRenderer]
    parser_classes: list = []
    content_negotiation_class = AnyAccept

    def throttled(self, request, wait):
        raise exceptions.Throttled(
            wait=wait,
            detail=f"This API key is limited to {request.auth.rpm_limit} requests per minute; retry after {wait} s.",
        )


# --- Schema-only serializers ------------------------------------------------------------------------


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField(min_value=0, required=False, help_text="Total input, incl. cache.")
    output_tokens = serializers.IntegerField(min_value=0, required=False, help_text="Total output, incl. reasoning.")
    cache_read_input_tokens = serializers.IntegerField(min_value=0, required=False)
    cache_creation_input_tokens = serializers.IntegerField(min_value=0, required=False)
    cache_creation_1h_input_tokens = serializers.IntegerField(min_value=0, required=False)
    reasoning_tokens = serializers.IntegerField(min_value=0, required=False)
    compute_ms = serializers.IntegerField(min_value=0, required=False, help_text="Local models: compute time.")


class UsageEventSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=128, help_text="Idempotency key, unique per tenant.")
    timestamp = serializers.DateTimeField(help_text="RFC 3339 with offset, when the call started.")
    department = serializers.CharField(
        max_length=64, required=False, help_text="Department code; required unless the key is bound to one."
    )
    user = serializers.CharField(max_length=255, required=False)
    provider = serializers.CharField(max_length=64)
    model = serializers.CharField(max_length=255, help_text="The model that served the call.")
    requested_model = serializers.CharField(max_length=255, required=False)
    operation = serializers.CharField(max_length=32, required=False, default="chat")
    operation_id = serializers.CharField(max_length=64, required=False, help_text="Links retries/fallbacks.")
    usage = UsageSerializer(required=False)
    latency_ms = serializers.IntegerField(min_value=0, required=False)
    ttft_ms = serializers.IntegerField(min_value=0, required=False)
    status = serializers.ChoiceField(choices=sorted(ingest.STATUSES), required=False, default="ok")
    error_type = serializers.CharField(max_length=128, required=False)
    cost = serializers.CharField(required=False, help_text='Caller-reported cost as a decimal string, e.g. "0.0123".')
    currency = serializers.CharField(min_length=3, max_length=3, required=False, help_text="ISO 4217; default USD.")
    trace_id = serializers.RegexField(r"^[0-9a-fA-F]{32}$", required=False)
    span_id = serializers.RegexField(r"^[0-9a-fA-F]{16}$", required=False)
    parent_span_id = serializers.RegexField(r"^[0-9a-fA-F]{16}$", required=False)
    session_id = serializers.CharField(max_length=128, required=False)
    feature = serializers.CharField(max_length=128, required=False)
    prompt_version = serializers.CharField(max_length=64, required=False)
    tags = serializers.DictField(
        child=serializers.CharField(max_length=ingest.MAX_TAG_VALUE_CHARS),
        required=False,
        help_text=f"At most {ingest.MAX_TAGS} entries; keys 1-{ingest.MAX_TAG_KEY_CHARS} characters.",
    )


class RejectedEventSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the request.")
    event_id = serializers.CharField(allow_null=True)
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="New events stored.")
    duplicates = serializers.IntegerField(help_text="Events whose event_id was already stored (or repeated).")
    rejected = RejectedEventSerializer(many=True)


ERROR_SCHEMA = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorDetail",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "errors": serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
            },
        )
    },
)

EXAMPLE_EVENT = {
    "event_id": "req_01J9Z3",
    "timestamp": "2025-03-01T12:00:00Z",
    "department": "research",
    "user": "alice@example.com",
    "provider": "openai",
    "model": "gpt-4o-2024-08-06",
    "operation": "chat",
    "usage": {"input_tokens": 1200, "cache_read_input_tokens": 1024, "output_tokens": 300, "reasoning_tokens": 0},
    "latency_ms": 840,
    "ttft_ms": 210,
    "status": "ok",
    "cost": "0.0045",
    "currency": "USD",
    "feature": "support-bot",
    "tags": {"env": "prod"},
}


class UsageEventsView(IngestView):
    @extend_schema(
        # SenderAuthentication is the same Bearer key scheme, looked up more narrowly: name the
        # shared component instead of letting the subclass register a second one.
        auth=[{"ApiKeyAuth": []}],
        operation_id="ingest_usage_events",
        summary="Record usage events (single or batch, idempotent)",
        description=(
            'Send one event object, a JSON array of events or `{"events": [...]}`, at most '
            f"{ingest.MAX_EVENTS_PER_BATCH} events and {settings.LLMOBS_INGEST_MAX_BODY_BYTES} bytes. "
            "`event_id` is the idempotency key: an id already stored for your tenant (or repeated "
            "in the batch; the first occurrence wins) counts as a duplicate and changes nothing. Valid "
            "events are stored in one transaction even when others are rejected; every event is "
            "priced at ingest (your `cost` is kept beside ours). Unknown fields are rejected."
        ),
        tags=["ingest"],
        request={JSON_TYPE: UsageEventSerializer(many=True)},
        responses={
            202: OpenApiResponse(IngestResultSerializer, description="Every event accepted or a duplicate."),
            207: OpenApiResponse(IngestResultSerializer, description="Some events rejected; the valid ones stored."),
            400: OpenApiResponse(ERROR_SCHEMA, description="Not JSON, not events, or no valid event (nothing stored)."),
            401: OpenApiResponse(ERROR_SCHEMA, description="Missing, unknown or revoked API key."),
            413: OpenApiResponse(ERROR_SCHEMA, description="Body over the size limit or more than 5,000 events."),
            503: OpenApiResponse(
                ERROR_SCHEMA,
                description="The database is unavailable; nothing of the request was completed. "
                "Resend it after `Retry-After` seconds (event ids make the resend safe).",
            ),
            429: OpenApiResponse(
                ERROR_SCHEMA, description="Over the key's requests-per-minute limit; see Retry-After."
            ),
        },
        examples=[
            OpenApiExample("Single event", value=EXAMPLE_EVENT, request_only=True),
            OpenApiExample("Batch", value={"events": [EXAMPLE_EVENT]}, request_only=True),
            OpenApiExample(
                "All accepted",
                value={"accepted": 2, "duplicates": 1, "rejected": []},
                response_only=True,
                status_codes=["202"],
            ),
            OpenApiExample(
                "Some rejected",
                value={
                    "accepted": 1,
                    "duplicates": 0,
                    "rejected": [
                        {"index": 1, "event_id": "req_2", "errors": {"usage.input_tokens": ["must not be negative."]}}
                    ],
                },
                response_only=True,
                status_codes=["207"],
            ),
            OpenApiExample(
                "Nothing valid",
                value={
                    "error": {
                        "code": "invalid",
                        "message": "timestamp: must include a UTC offset (Z or ±hh:mm).",
                        "errors": {"timestamp": ["must include a UTC offset (Z or ±hh:mm)."]},
                    },
                    "accepted": 0,
                    "duplicates": 0,
                    "rejected": [
                        {
                            "index": 0,
                            "event_id": "req_1",
                            "errors": {"timestamp": ["must include a UTC offset (Z or ±hh:mm)."]},
                        }
                    ],
                },
                response_only=True,
                status_codes=["400"],
            ),
        ],
    )
    def post(self, request):
        try:
            body = read_body(request)
        except BodyTooLarge:
            return _json(error_body("too_large", f"The body exceeds {max_body_bytes()} bytes."), 413)
        # Every event valid (the usual case): one pass, decoded and checked by msgspec.
        result = ingest.record_body(key=request.auth, body=body)
        if result is not None:
            return _json(result.as_dict(), 202)
        try:
            items = ingest.parse_batch(body)
        except ingest.BatchError as exc:
            return _json(error_body(exc.code, exc.message), exc.status)
        result = ingest.record_batch(key=request.auth, items=items)
        body = result.as_dict()
        if result.accepted or result.duplicates:
            return _json(body, 207 if result.rejected else 202)
        first = result.rejected[0]
        field, messages = next(iter(first.errors.items()))
        where = "" if len(items) == 1 else f"events[{first.index}]."
        message = f"{where}{field}: {messages[0]}"
        if len(items) > 1:
            message = f"No event was valid ({len(result.rejected)} rejected); first: {message}"
        return _json({**error_body("invalid", message, first.errors), **body}, 400)


class OtlpTracesView(IngestView):

    @extend_schema(
        auth=[{"ApiKeyAuth": []}],
        operation_id="otlp_export_traces",
        summary="OTLP/HTTP trace export (GenAI spans become usage events)",
        description=(
            "An OpenTelemetry `ExportTraceServiceRequest` as binary protobuf (`application/x-protobuf`, "
            "the exporters' default) or OTLP/JSON (`application/json`, hex ids), optionally "
            "`Content-Encoding: gzip`. Spans with `gen_ai.*` model-call attributes become usage events "
            "(`event_id` = trace id + span id, source `otlp`); agent/tool spans and non-GenAI spans are "
            "ignored. Department from `llmobs.department` (span or resource attribute) unless the key "
            "is bound; user from `user.id`; session from `session.id` or `gen_ai.conversation.id`. The "
            "answer is an `ExportTraceServiceResponse` in the request's encoding, with `partial_success` "
            "(rejected_spans, error_message) when some spans could not be recorded."
        ),
        tags=["ingest"],
        request={"application/x-protobuf": OpenApiTypes.BINARY, JSON_TYPE: OpenApiTypes.OBJECT},
        responses={
            200: OpenApiResponse(
                inline_serializer(
                    "ExportTraceServiceResponse",
                    {
                        "partialSuccess": inline_serializer(
                            "ExportTracePartialSuccess",
                            {"rejectedSpans": serializers.CharField(), "errorMessage": serializers.CharField()},
                        )
                    },
                ),
                description="Export processed; partialSuccess lists rejected GenAI spans.",
            ),
            400: OpenApiResponse(description="Not a decodable ExportTraceServiceRequest (google.rpc.Status body)."),
            401: OpenApiResponse(ERROR_SCHEMA, description="Missing, unknown or revoked API key."),
            413: OpenApiResponse(description="Body (after gzip) over the size limit or over 5,000 GenAI spans."),
            415: OpenApiResponse(description="Content-Type or Content-Encoding not supported."),
            429: OpenApiResponse(
                ERROR_SCHEMA, description="Over the key's requests-per-minute limit; see Retry-After."
            ),
        },
        examples=[
            OpenApiExample(
                "Partial success (JSON)",
                value={
                    "partialSuccess": {
                        "rejectedSpans": "1",
                        "errorMessage": "span 00f067aa0ba902b7 (trace 4bf92f3577b34da6a3ce929d0e0e4736): "
                        "llmobs.department: Unknown department 'reserch'.",
                    }
                },
                response_only=True,
                status_codes=["200"],
            )
        ],
    )
    def post(self, request):
        content_type = (request.META.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
        answer_type = otlp.PROTOBUF if content_type == otlp.PROTOBUF else JSON_TYPE
        try:
            body = otlp.decompress(
                read_body(request), encoding=request.META.get("HTTP_CONTENT_ENCODING", ""), limit=max_body_bytes()
            )
            spans = otlp.decode(body, content_type=content_type)
            result = otlp.record_spans(key=request.auth, spans=spans)
        except BodyTooLarge:
            return self._error(f"The body exceeds {max_body_bytes()} bytes.", 413, answer_type)
        except otlp.OtlpError as exc:
            return self._error(exc.message, exc.status, answer_type)
        return HttpResponse(otlp.encode_response(result, content_type=answer_type), content_type=answer_type)

    @staticmethod
    def _error(message: str, status: int, content_type: str) -> HttpResponse:
        body = otlp.encode_error(message, status=status, content_type=content_type)
        return HttpResponse(body, status=status, content_type=content_type)

"""`POST /v1/chat/completions`: the OpenAI-compatible gateway endpoint.

A plain Django view (no DRF) for latency: parse with orjson, validate by hand, call the
gateway, format OpenAI's wire shape (JSON or SSE). Any OpenAI SDK works by pointing its
`base_url` at `<host>/v1` with an llmobs API key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chargeback.auth import authenticate_token, bearer_token
from chargeback.models import ApiKey
from llmobs.jsontext import find_nul, nul_message
from telemetry import gateway
from telemetry.gateway import CallContext, GatewayError, Outcome
from telemetry.providers import ChatRequest

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_TOKENS_CAP = 1_000_000
ATTRIBUTION_MAX = 128
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "response_format", "logprobs", "audio")


def error_response(exc: GatewayError) -> HttpResponse:
    response = HttpResponse(orjson.dumps(exc.body()), status=exc.status, content_type="application/json")
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _invalid(message: str, param: str | None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


def parse_messages(value: Any, param: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _invalid(f"'{param}' must be a non-empty list of messages.", param)
    messages = []
    for index, message in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(message, dict):
            raise _invalid(f"'{where}' must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"'{where}.role' must be one of {sorted(ROLES)}.", f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _invalid(f"'{where}.content' must be a string or a list of content parts.", f"{where}.content")
        if isinstance(content, list) and not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise _invalid(f"'{where}.content' parts must be text parts; images are not supported.", f"{where}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def positive_int(body: dict[str, Any], name: str, cap: int = MAX_TOKENS_CAP) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise _invalid(f"'{name}' must be an integer between 1 and {cap}.", name)
    return value


def number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _invalid(f"'{name}' must be a number between {low} and {high}.", name)
    return float(value)


def parse_stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return stop
    raise _invalid("'stop' must be a string or a list of up to 4 strings.", "stop")


def short_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > ATTRIBUTION_MAX or "\x00" in value:
        raise _invalid(f"'{name}' must be a string of at most {ATTRIBUTION_MAX} characters, without NUL.", name)
    return value


def parse_tags(header: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in header.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _invalid("X-LLMObs-Tags must look like 'key=value,key2=value2'.", "X-LLMObs-Tags")
        tags[key.strip()[:64]] = value.strip()[:255]
    return tags


def parse_request(body: dict[str, Any]) -> tuple[str, ChatRequest, bool, bool]:
    """(alias, request, stream?, include_usage?) from an OpenAI chat-completions body."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("'model' is required: the route alias to call.", "model")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], False):
            raise _invalid(f"'{name}' is not supported by this gateway.", name)
    n = body.get("n")
    if n not in (None, 1):
        raise _invalid("'n' must be 1: the gateway returns one choice.", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be true or false.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object.", "stream_options")
    max_tokens = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
    request = ChatRequest(
        messages=parse_messages(body.get("messages")),
        max_tokens=max_tokens or 0,
        temperature=number(body, "temperature", 0, 2),
        top_p=number(body, "top_p", 0, 1),
        stop=parse_stop(body),
        user=short_text(body.get("user"), "user"),
    )
    return model, request, stream, bool(options.get("include_usage"))


def openai_usage(outcome: Outcome) -> dict[str, Any]:
    usage = outcome.usage
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def llmobs_extension(outcome: Outcome) -> dict[str, Any]:
    priced = outcome.priced
    return {
        "event_id": outcome.event_id,
        "operation_id": outcome.operation_id,
        "cost": str(priced.cost) if priced.cost is not None else None,
        "currency": priced.currency,
        "cost_provenance": priced.provenance,
    }


KEY_CACHE_SECONDS = 5.0
_keys: dict[str, tuple[float, ApiKey]] = {}


def cached_key(token: str) -> ApiKey | None:
    """`authenticate_token`, remembered for a few seconds per process: the lookup is a database
    round trip on every call otherwise. A revoked key stops working within KEY_CACHE_SECONDS;
    unknown tokens are never cached (so a new key works at once)."""
    now = time.monotonic()
    digest = ApiKey.hash_token(token)
    entry = _keys.get(digest)
    if entry is not None and now - entry[0] < KEY_CACHE_SECONDS:
        return entry[1]
    key = authenticate_token(token)
    if key is None:
        _keys.pop(digest, None)
        return None
    if len(_keys) > 10_000:
        _keys.clear()
    _keys[digest] = (now, key)
    return key


def forget_keys() -> None:
    _keys.clear()


def _authenticate(request: HttpRequest):
    token = bearer_token(request.META.get("HTTP_AUTHORIZATION", ""))
    key = cached_key(token) if token else None
    if key is None:
        raise GatewayError(
            401,
            "invalid_api_key",
            "Provide a valid llmobs API key as 'Authorization: Bearer <key>'.",
            type="invalid_request_error",
        )
    return key


@csrf_exempt
def chat_completions(request: HttpRequest) -> HttpResponse:
    arrived = time.perf_counter()
    if request.method != "POST":
        return error_response(GatewayError(405, "method_not_allowed", "Use POST."))
    try:
        key = _authenticate(request)
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise _invalid(f"The body is not valid JSON: {exc}.", None) from exc
        if not isinstance(body, dict):
            raise _invalid("The body must be a JSON object.", None)
        if (nul := find_nul(body)) is not None:
            raise _invalid(nul_message(nul), nul)
        alias, chat_request, stream, include_usage = parse_request(body)
        meta = request.META
        ctx = CallContext.for_key(
            key,
            user_ref=short_text(meta.get("HTTP_X_LLMOBS_USER"), "X-LLMObs-User") or chat_request.user,
            feature=short_text(meta.get("HTTP_X_LLMOBS_FEATURE"), "X-LLMObs-Feature"),
            session_id=short_text(meta.get("HTTP_X_LLMOBS_SESSION"), "X-LLMObs-Session"),
            tags=parse_tags(meta.get("HTTP_X_LLMOBS_TAGS", "")),
        )
        if stream:
            call = gateway.stream(ctx=ctx, alias=alias, request=chat_request)
            return _stream_response(call, include_usage, arrived)
        outcome = gateway.complete(ctx=ctx, alias=alias, request=chat_request)
    except GatewayError as exc:
        return error_response(exc)
    body = {
        "id": f"chatcmpl-{outcome.event_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": outcome.served_model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.text},
                "finish_reason": outcome.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": openai_usage(outcome),
        "llmobs": llmobs_extension(outcome),
    }
    response = HttpResponse(orjson.dumps(body), content_type="application/json")
    response["X-LLMObs-Event-Id"] = outcome.event_id
    response["X-LLMObs-Operation-Id"] = outcome.operation_id
    if outcome.priced.cost is not None:
        response["X-LLMObs-Cost"] = str(outcome.priced.cost)
        response["X-LLMObs-Currency"] = outcome.priced.currency
    overhead = (time.perf_counter() - arrived) * 1000 - outcome.upstream_ms
    response["X-Gateway-Overhead-Ms"] = f"{max(overhead, 0):.2f}"
    return response


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _stream_response(call: gateway.StreamedCall, include_usage: bool, arrived: float) -> StreamingHttpResponse:
    chunk_id = f"chatcmpl-{call.event_id}"
    created = int(time.time())
    model = call._route.config.upstream_model

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        return _sse(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    def events() -> Iterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        for delta in call:
            yield chunk({"content": delta}, None)
        if call.error is not None:
            yield _sse(call.error.body())
            return
        outcome = call.outcome
        assert outcome is not None
        yield chunk({}, outcome.finish_reason or "stop")
        if include_usage:
            yield _sse(
                {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": outcome.served_model,
                    "choices": [],
                    "usage": openai_usage(outcome),
                    "llmobs": llmobs_extension(outcome),
                }
            )
        yield b"data: [DONE]\n\n"

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response._resource_closers.append(call.abandon)  # body never read: still recorded
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["X-LLMObs-Event-Id"] = call.event_id
    response["X-LLMObs-Operation-Id"] = call.operation_id
    overhead = (time.perf_counter() - arrived) * 1000 - call.op.upstream_ms
    response["X-Gateway-Overhead-Ms"] = f"{max(overhead, 0):.2f}"
    return response

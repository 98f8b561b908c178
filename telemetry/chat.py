"""`POST /api/chat`: the internal chat for employees (session + CSRF) and integrations (API key).

Body: `{"route": alias, "messages": [...], "session_id"?: str, "max_tokens"?: int, "stream"?: bool}`.
JSON answer: message, usage, cost, event id. With `"stream": true`, Server-Sent Events:
`event: delta` (`{"content": ...}`) for each piece, then `event: done` with the same object as
the JSON answer, or `event: error` with the error body. Department and user come from the
logged-in user's Membership (or the key's binding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from chargeback.auth import authenticate_token, bearer_token
from chargeback.models import Membership
from llmobs.jsontext import find_nul, nul_message
from telemetry import gateway
from telemetry.gateway import CallContext, GatewayError, Outcome
from telemetry.models import UsageEvent
from telemetry.openai_compat import error_response, parse_messages, positive_int, short_text
from telemetry.providers import ChatRequest


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    check = CsrfViewMiddleware(lambda req: HttpResponse())
    check.process_request(request)
    rejected = check.process_view(request, None, (), {})
    if rejected is not None:
        return error_response(GatewayError(403, "csrf_failed", "CSRF check failed: send the X-CSRFToken header."))
    return None


def _context(request: HttpRequest, session_id: str) -> CallContext | HttpResponse:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        token = bearer_token(header)
        key = authenticate_token(token) if token else None
        if key is None:
            raise GatewayError(401, "unauthenticated", "The API key is unknown or has been revoked.")
        return CallContext.for_key(key, source=UsageEvent.Source.CHAT, session_id=session_id)
    if not request.user.is_authenticated:
        raise GatewayError(401, "unauthenticated", "Log in or send an API key to use the chat.")
    failure = _csrf_failure(request)
    if failure is not None:
        return failure
    membership = (
        Membership.objects.filter(user=request.user).select_related("tenant", "department").order_by("pk").first()
    )
    if membership is None:
        raise GatewayError(403, "no_membership", "Your account is not a member of any tenant.")
    return CallContext(
        tenant=membership.tenant,
        source=UsageEvent.Source.CHAT,
        department_id=membership.department_id,
        department_code=membership.department.code if membership.department_id else "",
        user_ref=request.user.get_username(),
        session_id=session_id,
        feature="chat",
    )


def parse_chat(body: Any) -> tuple[str, ChatRequest, bool, str]:
    if not isinstance(body, dict):
        raise GatewayError(400, "invalid_request", "The body must be a JSON object.")
    alias = body.get("route")
    if not isinstance(alias, str) or not alias.strip():
        raise GatewayError(400, "invalid_request", "'route' is required: the alias of a chat route.", param="route")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(400, "invalid_request", "'stream' must be true or false.", param="stream")
    request = ChatRequest(
        messages=parse_messages(body.get("messages")), max_tokens=positive_int(body, "max_tokens") or 0
    )
    return alias, request, stream, short_text(body.get("session_id"), "session_id")


def result_body(outcome: Outcome) -> dict[str, Any]:
    priced = outcome.priced
    return {
        "event_id": outcome.event_id,
        "operation_id": outcome.operation_id,
        "route": outcome.route_alias,
        "provider": outcome.provider,
        "model": outcome.served_model,
        "message": {"role": "assistant", "content": outcome.text},
        "finish_reason": outcome.finish_reason,
        "usage": outcome.usage.to_fields(),
        "cost": str(priced.cost) if priced.cost is not None else None,
        "currency": priced.currency,
        "cost_provenance": priced.provenance,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@csrf_exempt  # enforced below for session-authenticated requests; API keys are not cookies
def chat(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return error_response(GatewayError(405, "method_not_allowed", "Use POST."))
    try:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, "invalid_request", f"The body is not valid JSON: {exc}.") from exc
        if (nul := find_nul(body)) is not None:
            raise GatewayError(400, "invalid_request", nul_message(nul), param=nul)
        alias, chat_request, stream, session_id = parse_chat(body)
        ctx = _context(request, session_id)
        if isinstance(ctx, HttpResponse):
            return ctx
        if stream:
            call = gateway.stream(ctx=ctx, alias=alias, request=chat_request, require_chat=True)

            def events() -> Iterator[bytes]:
                for delta in call:
                    yield _event("delta", {"content": delta})
                if call.error is not None:
                    yield _event("error", call.error.body())
                else:
                    assert call.outcome is not None
                    yield _event("done", result_body(call.outcome))

            response = StreamingHttpResponse(events(), content_type="text/event-stream")
            response._resource_closers.append(call.abandon)  # body never read: still recorded
            response["Cache-Control"] = "no-cache"
            response["X-LLMObs-Event-Id"] = call.event_id
            return response
        outcome = gateway.complete(ctx=ctx, alias=alias, request=chat_request, require_chat=True)
    except GatewayError as exc:
        return error_response(exc)
    response = HttpResponse(orjson.dumps(result_body(outcome)), content_type="application/json")
    response["X-LLMObs-Event-Id"] = outcome.event_id
    return response

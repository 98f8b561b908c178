"""Anthropic Messages through the official `anthropic` SDK.

System messages move to the `system` parameter. Stream usage is folded with
`merge_anthropic_stream`: `message_start` has the input and cache counts, `message_delta`
cumulative totals, so the latest value wins and nothing is summed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import orjson

from chargeback.usage import UsageError, from_anthropic, merge_anthropic_stream
from telemetry.providers import (
    ChatRequest,
    ChatResult,
    ProviderError,
    RouteConfig,
    TextStream,
    pooled_client,
    text_of,
)

# Anthropic stop reasons in OpenAI's vocabulary, so /v1/chat/completions answers consistently.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def _client(route: RouteConfig) -> anthropic.Anthropic:
    return pooled_client(
        route,
        lambda: anthropic.Anthropic(
            api_key=route.credential or "not-set",
            base_url=route.base_url or None,
            timeout=route.timeout_seconds,
            max_retries=0,
        ),
    )


def _params(route: RouteConfig, request: ChatRequest) -> dict[str, Any]:
    system = "\n\n".join(text_of(m.get("content")) for m in request.messages if m.get("role") == "system")
    messages = [
        {"role": "assistant" if m.get("role") == "assistant" else "user", "content": text_of(m.get("content"))}
        for m in request.messages
        if m.get("role") != "system"
    ]
    params: dict[str, Any] = {"model": route.upstream_model, "messages": messages, "max_tokens": request.max_tokens}
    if system:
        params["system"] = system
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.top_p is not None:
        params["top_p"] = request.top_p
    if request.stop:
        params["stop_sequences"] = request.stop
    return params


def translate_error(exc: Exception) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(504, "The upstream model did not answer in time.", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError(502, f"Could not reach the upstream model: {exc}", kind="connection")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = "rate_limited" if status in (429, 529) else ("upstream_error" if status >= 500 else "bad_request")
        message = f"Upstream error: HTTP {status}"
        if isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict):
            message = f"Upstream error: {exc.body['error'].get('message', message)}"
        retry_after = exc.response.headers.get("retry-after")
        try:
            retry = float(retry_after) if retry_after else None
        except ValueError:
            retry = None
        return ProviderError(429 if status == 529 else status, message, kind=kind, retry_after=retry)
    if isinstance(exc, UsageError):
        return ProviderError(502, f"The upstream reported unusable usage: {exc}")
    return ProviderError(502, f"The upstream answered with an unreadable response ({type(exc).__name__}).")


class AnthropicAdapter:
    def complete(self, route: RouteConfig, request: ChatRequest) -> ChatResult:
        # Low-level `post` with a bytes body, as for OpenAI: the typed models cost more CPU
        # than the rest of the gateway call.
        try:
            raw = _client(route).post("/v1/messages", body=_params(route, request), cast_to=bytes)
            data = orjson.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("content"), list):
                raise ProviderError(502, "The upstream answered with an unreadable response.")
            text = "".join(
                b.get("text", "") for b in data["content"] if isinstance(b, dict) and b.get("type") == "text"
            )
            usage = from_anthropic(data.get("usage"))
        except Exception as exc:
            raise translate_error(exc) from exc
        reason = data.get("stop_reason") or ""
        return ChatResult(
            text=text,
            finish_reason=FINISH_REASONS.get(reason, reason),
            usage=usage,
            served_model=data.get("model") or route.upstream_model,
            response_id=data.get("id") or "",
        )

    def stream(self, route: RouteConfig, request: ChatRequest) -> AnthropicStream:
        try:
            raw = _client(route).messages.create(**_params(route, request), stream=True)
        except Exception as exc:
            raise translate_error(exc) from exc
        return AnthropicStream(raw, route.upstream_model)


class AnthropicStream(TextStream):
    def __init__(self, raw: Any, served_model: str) -> None:
        super().__init__(served_model)
        self._raw = raw

    def deltas(self) -> Iterator[str]:
        try:
            for event in self._raw:
                kind = event.type
                if kind == "message_start":
                    self.served_model = event.message.model or self.served_model
                    self.usage = merge_anthropic_stream(self.usage, _usage_dict(event.message.usage))
                elif kind == "content_block_delta":
                    text = getattr(event.delta, "text", None)
                    if text:
                        yield text
                elif kind == "message_delta":
                    if event.usage is not None:
                        self.usage = merge_anthropic_stream(self.usage, _usage_dict(event.usage))
                    reason = event.delta.stop_reason or ""
                    if reason:
                        self.finish_reason = FINISH_REASONS.get(reason, reason)
        except GeneratorExit:
            raise
        except Exception as exc:
            raise translate_error(exc) from exc
        if not self.finish_reason:
            # The connection closed before the provider's end marker: an interrupted stream.
            raise ProviderError(502, "The upstream stream ended before completing.", kind="connection")

    def close(self) -> None:
        super().close()
        self._raw.close()


def _usage_dict(usage: Any) -> dict[str, Any]:
    # Only the fields the event actually carried: merge keeps earlier values for absent ones.
    data = usage.model_dump(exclude_none=True) if usage is not None else {}
    return data

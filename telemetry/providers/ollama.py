"""Ollama's native chat API through the official `ollama` SDK. Usage (token counts and
nanosecond durations) arrives on the final `done` response or stream chunk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama

from chargeback.usage import UsageError, from_ollama
from telemetry.providers import ChatRequest, ChatResult, ProviderError, RouteConfig, TextStream, pooled_client, text_of

FINISH_REASONS = {"stop": "stop", "length": "length"}


def _client(route: RouteConfig) -> ollama.Client:
    headers = {"Authorization": f"Bearer {route.credential}"} if route.credential else None
    return pooled_client(
        route,
        lambda: ollama.Client(
            host=route.base_url or None,
            timeout=httpx.Timeout(route.timeout_seconds, connect=min(route.timeout_seconds, 5.0)),
            headers=headers,
        ),
    )


def _params(route: RouteConfig, request: ChatRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"num_predict": request.max_tokens}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.stop:
        options["stop"] = request.stop
    messages = [{"role": m.get("role", "user"), "content": text_of(m.get("content"))} for m in request.messages]
    return {"model": route.upstream_model, "messages": messages, "options": options}


def translate_error(exc: Exception) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(504, "The upstream model did not answer in time.", kind="timeout")
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return ProviderError(502, f"Could not reach the upstream model: {exc}", kind="connection")
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code if exc.status_code and exc.status_code > 0 else 502
        kind = "rate_limited" if status == 429 else ("upstream_error" if status >= 500 else "bad_request")
        return ProviderError(status, f"Upstream error: {exc.error}", kind=kind)
    if isinstance(exc, UsageError):
        return ProviderError(502, f"The upstream reported unusable usage: {exc}")
    return ProviderError(502, f"The upstream answered with an unreadable response ({type(exc).__name__}).")


def _usage(response: Any):
    return from_ollama(
        {
            name: getattr(response, name, None)
            for name in (
                "prompt_eval_count",
                "eval_count",
                "total_duration",
                "load_duration",
                "prompt_eval_duration",
                "eval_duration",
            )
        }
    )


class OllamaAdapter:
    def complete(self, route: RouteConfig, request: ChatRequest) -> ChatResult:
        try:
            response = _client(route).chat(**_params(route, request))
            usage = _usage(response)
            text = response.message.content or ""
        except Exception as exc:
            raise translate_error(exc) from exc
        reason = response.done_reason or ("stop" if response.done else "")
        return ChatResult(
            text=text,
            finish_reason=FINISH_REASONS.get(reason, reason),
            usage=usage,
            served_model=response.model or route.upstream_model,
        )

    def stream(self, route: RouteConfig, request: ChatRequest) -> OllamaStream:
        try:
            raw = _client(route).chat(**_params(route, request), stream=True)
        except Exception as exc:
            raise translate_error(exc) from exc
        return OllamaStream(raw, route.upstream_model)


class OllamaStream(TextStream):
    def __init__(self, raw: Iterator[Any], served_model: str) -> None:
        super().__init__(served_model)
        self._raw = raw

    def deltas(self) -> Iterator[str]:
        try:
            for chunk in self._raw:
                if chunk.model:
                    self.served_model = chunk.model
                content = chunk.message.content if chunk.message is not None else None
                if content:
                    yield content
                if chunk.done:
                    self.usage = _usage(chunk)
                    reason = chunk.done_reason or "stop"
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
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()

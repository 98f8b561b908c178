"""The `demo` provider: canned answers, no network, for the embedded default so the chat and
gateway can be tried with no keys. Every answer says it is a demo; usage is estimated from
the text (characters / 4) and the served model is `demo-echo`."""

from __future__ import annotations

from collections.abc import Iterator

from chargeback.usage import Usage
from telemetry.providers import ChatRequest, ChatResult, RouteConfig, TextStream, text_of

PREFIX = "[demo provider — canned answer, no model was called] "


def _answer(request: ChatRequest) -> str:
    last = next((text_of(m.get("content")) for m in reversed(request.messages) if m.get("role") == "user"), "")
    snippet = " ".join(last.split()[:30])
    return f"{PREFIX}You said: “{snippet}”. Configure a real route (OpenAI, Anthropic or Ollama) to get real answers."


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _usage(request: ChatRequest, answer: str) -> Usage:
    prompt = sum(estimate_tokens(text_of(m.get("content"))) for m in request.messages)
    return Usage(input_tokens=prompt, output_tokens=min(estimate_tokens(answer), request.max_tokens))


class DemoAdapter:
    def complete(self, route: RouteConfig, request: ChatRequest) -> ChatResult:
        answer = _answer(request)
        return ChatResult(
            text=answer, finish_reason="stop", usage=_usage(request, answer), served_model=route.upstream_model
        )

    def stream(self, route: RouteConfig, request: ChatRequest) -> DemoStream:
        return DemoStream(route.upstream_model, request)


class DemoStream(TextStream):
    def __init__(self, served_model: str, request: ChatRequest) -> None:
        super().__init__(served_model)
        self._request = request

    def deltas(self) -> Iterator[str]:
        answer = _answer(self._request)
        for word in answer.split(" "):
            yield word + " "
        self.usage = _usage(self._request, answer)
        self.finish_reason = "stop"

"""Provider adapters behind one small interface.

Every adapter turns a `ChatRequest` (our common chat shape: OpenAI-style messages) into its
provider's call through the official SDK, and the answer back into a `ChatResult`, or, when
streamed, into a `ProviderStream` of text deltas whose usage is known once the stream ends.
Usage always comes out in the canonical buckets of `chargeback.usage`.

SDK clients are pooled per (provider, base URL, credential, timeout) and created once per
process: building a client costs milliseconds (TLS context, connection pool), which would be
most of the gateway's latency budget. SDK-level retries are disabled; the gateway retries
itself so that every attempt is recorded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from chargeback.usage import Usage


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """The parts of a `chargeback.models.Route` an adapter needs (a plain snapshot, so pooled
    clients and worker threads never hold ORM objects)."""

    provider: str
    upstream_model: str
    base_url: str = ""
    credential_env: str = ""
    timeout_seconds: float = 60.0

    @property
    def credential(self) -> str:
        return os.environ.get(self.credential_env, "") if self.credential_env else ""

    @property
    def endpoint(self) -> str:
        """Identifies the upstream for circuit breaking and client pooling."""
        return f"{self.provider}|{self.base_url or 'default'}"


@dataclass(slots=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    user: str = ""


@dataclass(slots=True)
class ChatResult:
    text: str
    finish_reason: str
    usage: Usage
    served_model: str
    response_id: str = ""


@dataclass(slots=True)
class ProviderError(Exception):
    """A failed upstream call, classified for retry and for the caller's error body."""

    status: int
    message: str
    kind: str = "upstream_error"  # timeout | connection | rate_limited | upstream_error | bad_request | circuit_open
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind} ({self.status}): {self.message}"

    @property
    def retryable(self) -> bool:
        return self.kind in ("timeout", "connection", "rate_limited") or self.status >= 500


class ProviderStream(Protocol):
    """An iterator of text deltas. After exhaustion `usage`, `finish_reason` and
    `served_model` hold the final values; `delivered_text` whatever was yielded so far."""

    usage: Usage | None
    finish_reason: str
    served_model: str
    delivered_text: str

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class Adapter(Protocol):
    def complete(self, route: RouteConfig, request: ChatRequest) -> ChatResult: ...

    def stream(self, route: RouteConfig, request: ChatRequest) -> ProviderStream: ...


class TextStream:
    """A ProviderStream over a generator of deltas; subclasses fill in the final usage."""

    def __init__(self, served_model: str) -> None:
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.served_model = served_model
        self.delivered_text = ""
        self._iterator: Iterator[str] | None = None

    def deltas(self) -> Iterator[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self.deltas()
        for delta in self._iterator:
            self.delivered_text += delta
            yield delta

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()


# --- client pool ------------------------------------------------------------------------------

_clients: dict[tuple[str, str, str, float], Any] = {}
_clients_lock = threading.Lock()


def pooled_client(route: RouteConfig, factory: Callable[[], Any]) -> Any:
    key = (route.provider, route.base_url, route.credential_env, route.timeout_seconds)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = factory()
                _clients[key] = client
    return client


def reset_clients() -> None:
    """Forget pooled clients (tests that restart a fake upstream on a new port)."""
    with _clients_lock:
        _clients.clear()


_adapters: dict[str, Adapter] = {}


def get_adapter(provider: str) -> Adapter:
    adapter = _adapters.get(provider)
    if adapter is not None:
        return adapter
    if provider == "openai":
        from telemetry.providers.openai import OpenAIAdapter as cls
    elif provider == "anthropic":
        from telemetry.providers.anthropic import AnthropicAdapter as cls
    elif provider == "ollama":
        from telemetry.providers.ollama import OllamaAdapter as cls
    elif provider == "demo":
        from telemetry.providers.demo import DemoAdapter as cls
    else:
        raise ProviderError(400, f"Unknown provider {provider!r}.", kind="bad_request")
    adapter = _adapters[provider] = cls()
    return adapter


def text_of(content: Any) -> str:
    """The text of an OpenAI-style message content (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)

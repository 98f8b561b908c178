"""The canonical usage record and the normalisers that turn each provider's report into it.

Canonical buckets (DESIGN.md §4, OpenTelemetry semantics):
- `input_tokens`: total input, *including* cache reads and cache writes;
- `cache_read_input_tokens`, `cache_creation_input_tokens` (of which
  `cache_creation_1h_input_tokens` were 1-hour writes): subsets of `input_tokens`;
- `output_tokens`: total output, *including* `reasoning_tokens`;
- `compute_ms`: reported compute time for local models (Ollama), for per-GPU-second rates.

Providers disagree (see shared/reference/provider-usage.md): OpenAI counts cached tokens inside
`prompt_tokens`; Anthropic reports `cache_*` *outside* `input_tokens`; Ollama reports
`prompt_eval_count`/`eval_count` and durations in nanoseconds; Gemini keeps thoughts outside
`candidatesTokenCount`. Every normaliser here is pure and tolerant of absent fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


class UsageError(ValueError):
    """Usage that cannot be normalised; `field` names the offending bucket."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    compute_ms: int | None = None

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cache_read_input_tokens - self.cache_creation_input_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def validated(self) -> Usage:
        """Self, after checking the buckets are non-negative and nest as the canonical record says."""
        for name in (
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cache_creation_1h_input_tokens",
            "output_tokens",
            "reasoning_tokens",
        ):
            if getattr(self, name) < 0:
                raise UsageError(name, "must not be negative.")
        if self.compute_ms is not None and self.compute_ms < 0:
            raise UsageError("compute_ms", "must not be negative.")
        if self.cache_read_input_tokens + self.cache_creation_input_tokens > self.input_tokens:
            raise UsageError(
                "input_tokens",
                "must include cache reads and writes (input_tokens < cache_read + cache_creation).",
            )
        if self.cache_creation_1h_input_tokens > self.cache_creation_input_tokens:
            raise UsageError("cache_creation_1h_input_tokens", "must not exceed cache_creation_input_tokens.")
        if self.reasoning_tokens > self.output_tokens:
            raise UsageError("reasoning_tokens", "must not exceed output_tokens (output includes reasoning).")
        return self

    def to_fields(self) -> dict[str, int | None]:
        """The UsageEvent column values."""
        return {
            "input_tokens": self.input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "compute_ms": self.compute_ms,
        }


def _int(data: Mapping[str, Any] | None, *path: str) -> int:
    """A non-negative int at `path`, 0 when absent or null. Rejects bools, floats with fractions
    and negative numbers, because silently coercing them would mis-bill."""
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return 0
        value = value.get(key)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise UsageError(".".join(path), "must be an integer, not a boolean.")
    if isinstance(value, float):
        if not value.is_integer():
            raise UsageError(".".join(path), "must be a whole number of tokens.")
        value = int(value)
    if isinstance(value, str):
        # OTLP/JSON sends int64 attributes as strings ({"intValue": "123"}).
        # ASCII digits only: "²".isdigit() is true but int() refuses it.
        if not (value.isascii() and value.isdigit()):
            raise UsageError(".".join(path), "must be an integer.")
        value = int(value)
    if not isinstance(value, int):
        raise UsageError(".".join(path), "must be an integer.")
    if value < 0:
        raise UsageError(".".join(path), "must not be negative.")
    return value


def from_openai_chat(usage: Mapping[str, Any] | None) -> Usage:
    """OpenAI Chat Completions `usage`: cached ⊂ prompt, reasoning ⊂ completion.

    A newer `prompt_tokens_details.cache_write_tokens` (and OpenRouter's `cache_write_tokens`)
    is read when present, also as a subset of the prompt.
    """
    details = (usage or {}).get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=_int(usage, "prompt_tokens"),
        cache_read_input_tokens=_int(details, "cached_tokens"),
        cache_creation_input_tokens=_int(details, "cache_write_tokens"),
        output_tokens=_int(usage, "completion_tokens"),
        reasoning_tokens=_int(usage, "completion_tokens_details", "reasoning_tokens"),
    ).validated()


def from_openai_responses(usage: Mapping[str, Any] | None) -> Usage:
    """OpenAI Responses API `usage`: the same inclusive semantics under other names."""
    return Usage(
        input_tokens=_int(usage, "input_tokens"),
        cache_read_input_tokens=_int(usage, "input_tokens_details", "cached_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        reasoning_tokens=_int(usage, "output_tokens_details", "reasoning_tokens"),
    ).validated()


def from_anthropic(usage: Mapping[str, Any] | None) -> Usage:
    """Anthropic Messages `usage`: `input_tokens` excludes the cache counts, so total input is
    their sum. The 5-minute/1-hour split of cache writes comes from `cache_creation`; when it is
    absent every write is taken as a 5-minute write (the default TTL)."""
    uncached = _int(usage, "input_tokens")
    cache_read = _int(usage, "cache_read_input_tokens")
    cache_write = _int(usage, "cache_creation_input_tokens")
    write_1h = _int(usage, "cache_creation", "ephemeral_1h_input_tokens")
    write_5m = _int(usage, "cache_creation", "ephemeral_5m_input_tokens")
    if not cache_write:
        cache_write = write_1h + write_5m
    return Usage(
        input_tokens=uncached + cache_read + cache_write,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        cache_creation_1h_input_tokens=min(write_1h, cache_write),
        output_tokens=_int(usage, "output_tokens"),
    ).validated()


def merge_anthropic_stream(current: Usage | None, event_usage: Mapping[str, Any]) -> Usage:
    """Fold one streaming event's usage into the running total.

    `message_start` carries input and cache counts with a placeholder output count;
    `message_delta` carries *cumulative* counts. So each field takes the latest value reported,
    never a sum, and a field an event leaves out keeps its earlier value (reading cache counts
    only from `message_delta` would give 0).
    """
    update = from_anthropic(event_usage)
    if current is None:
        return update
    present = set(event_usage)
    uncached_now = current.uncached_input_tokens
    read = update.cache_read_input_tokens if "cache_read_input_tokens" in present else current.cache_read_input_tokens
    write_present = "cache_creation_input_tokens" in present or "cache_creation" in present
    write = update.cache_creation_input_tokens if write_present else current.cache_creation_input_tokens
    write_1h = update.cache_creation_1h_input_tokens if write_present else current.cache_creation_1h_input_tokens
    uncached = _int(event_usage, "input_tokens") if "input_tokens" in present else uncached_now
    output = update.output_tokens if "output_tokens" in present else current.output_tokens
    return Usage(
        input_tokens=uncached + read + write,
        cache_read_input_tokens=read,
        cache_creation_input_tokens=write,
        cache_creation_1h_input_tokens=write_1h,
        output_tokens=output,
    ).validated()


NS_PER_MS = 1_000_000


def from_ollama(response: Mapping[str, Any] | None) -> Usage:
    """Ollama native API (final `done` chunk): counts, and durations in *nanoseconds*.

    `prompt_eval_count` may be absent when the whole prompt was cached; with the newer
    `prompt_eval_cached_count` the prompt is then taken as fully cached. Compute time is
    prompt evaluation plus generation (load time is not the caller's work).
    """
    cached = _int(response, "prompt_eval_cached_count")
    prompt = _int(response, "prompt_eval_count")
    if response is not None and response.get("prompt_eval_count") is None and cached:
        prompt = cached
    compute_ns = _int(response, "prompt_eval_duration") + _int(response, "eval_duration")
    if not compute_ns:
        compute_ns = max(_int(response, "total_duration") - _int(response, "load_duration"), 0)
    return Usage(
        input_tokens=max(prompt, cached),
        cache_read_input_tokens=cached,
        output_tokens=_int(response, "eval_count"),
        compute_ms=compute_ns // NS_PER_MS if compute_ns else None,
    ).validated()


def from_gemini(usage_metadata: Mapping[str, Any] | None) -> Usage:
    """Gemini `usageMetadata`: cached ⊂ prompt, but thoughts are *outside* candidates."""
    thoughts = _int(usage_metadata, "thoughtsTokenCount")
    return Usage(
        input_tokens=_int(usage_metadata, "promptTokenCount"),
        cache_read_input_tokens=_int(usage_metadata, "cachedContentTokenCount"),
        output_tokens=_int(usage_metadata, "candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
    ).validated()


# OpenTelemetry GenAI attributes, current names first, then deprecated aliases still emitted by
# instrumentations in the wild.
OTEL_INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OTEL_OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
OTEL_CACHE_READ = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
OTEL_CACHE_WRITE = ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens")
OTEL_REASONING = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens")


def _first(attributes: Mapping[str, Any], names: tuple[str, ...]) -> int:
    for name in names:
        if attributes.get(name) is not None:
            return _int(attributes, name)
    return 0


def from_otel(attributes: Mapping[str, Any]) -> Usage:
    """OpenTelemetry GenAI span attributes: `gen_ai.usage.input_tokens` is the total input
    including cache reads and writes, which are reported in their own attributes.

    Some instrumentations put Anthropic's *exclusive* `input_tokens` there; when the cache
    counts exceed the reported input that can only be the exclusive form, so they are added
    back rather than producing a negative uncached count (langfuse#12306).
    """
    reported_input = _first(attributes, OTEL_INPUT)
    read = _first(attributes, OTEL_CACHE_READ)
    write = _first(attributes, OTEL_CACHE_WRITE)
    input_tokens = reported_input if reported_input >= read + write else reported_input + read + write
    output = _first(attributes, OTEL_OUTPUT)
    reasoning = _first(attributes, OTEL_REASONING)
    return Usage(
        input_tokens=input_tokens,
        cache_read_input_tokens=read,
        cache_creation_input_tokens=write,
        output_tokens=max(output, reasoning),
        reasoning_tokens=reasoning,
    ).validated()


def from_canonical(usage: Mapping[str, Any] | None) -> Usage:
    """Our own ingest shape (already canonical); strict: inconsistent buckets are errors."""
    if usage is not None and not isinstance(usage, Mapping):
        raise UsageError("usage", "must be an object.")
    return Usage(
        input_tokens=_int(usage, "input_tokens"),
        cache_read_input_tokens=_int(usage, "cache_read_input_tokens"),
        cache_creation_input_tokens=_int(usage, "cache_creation_input_tokens"),
        cache_creation_1h_input_tokens=_int(usage, "cache_creation_1h_input_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        reasoning_tokens=_int(usage, "reasoning_tokens"),
        compute_ms=_int(usage, "compute_ms") if (usage or {}).get("compute_ms") is not None else None,
    ).validated()


def with_estimate(usage: Usage, *, output_tokens: int) -> Usage:
    """Usage of a stream cut short: the prompt as sent and the output delivered so far."""
    return replace(usage, output_tokens=max(usage.output_tokens, output_tokens))

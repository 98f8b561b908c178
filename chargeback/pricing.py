"""The cost engine: which price applies to a call, and what the call cost.

Pure and fast. A `PriceBook` is an in-memory index of one tenant's prices (its overrides on top
of the shared catalogue); `price_usage` picks the row effective at the event time and applies
it to a canonical `Usage`. Resolution order for a (provider, model, time):

1. tenant override rows before catalogue rows;
2. within each, exact matches before regular expressions (higher `priority` first, then the
   later-starting row);
3. the row must be effective at the event time (`effective_from <= t < effective_to`).

Money is `Decimal` throughout; costs keep full precision (rounded only on invoice and budget
display lines, see `chargeback/money.py`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.core.cache import cache

from chargeback.usage import Usage

log = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
MS_PER_SECOND = Decimal(1000)
ZERO = Decimal(0)


class Provenance:
    COMPUTED = "computed"
    REPORTED = "reported"
    ESTIMATED = "estimated"
    UNPRICED = "unpriced"


# Names integrations use for the same provider; prices are keyed by the catalogue's id.
PROVIDER_ALIASES = {
    "gemini": "google",
    "google_genai": "google",
    "vertex_ai": "google",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "azure_openai": "azure",
    "azure.ai.openai": "azure",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "mistral_ai": "mistral",
    "xai": "x-ai",
}


def normalise_provider(provider: str) -> str:
    key = (provider or "").strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def normalise_model(provider: str, model: str) -> str:
    """Lower-case, and strip a leading `provider/` (OpenRouter/LiteLLM style) when it names the
    same provider, so `openai/gpt-4o` prices as `gpt-4o` (langfuse#10958)."""
    name = (model or "").strip().lower()
    head, sep, tail = name.partition("/")
    if sep and normalise_provider(head) == provider:
        return tail
    return name


@dataclass(frozen=True, slots=True)
class Price:
    """An immutable snapshot of a ModelPrice row. Token prices are per 1M tokens."""

    id: int | None
    tenant_id: int | None
    provider: str
    model_pattern: str
    match_type: str
    effective_from: datetime
    effective_to: datetime | None
    currency: str = "USD"
    input_per_mtok: Decimal = ZERO
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    output_per_mtok: Decimal = ZERO
    reasoning_per_mtok: Decimal | None = None
    per_request_fee: Decimal = ZERO
    long_context_threshold_tokens: int | None = None
    long_context_input_per_mtok: Decimal | None = None
    long_context_cache_read_per_mtok: Decimal | None = None
    long_context_cache_write_per_mtok: Decimal | None = None
    long_context_output_per_mtok: Decimal | None = None
    per_gpu_second: Decimal | None = None
    priority: int = 0

    FIELDS = (
        "id",
        "tenant_id",
        "provider",
        "model_pattern",
        "match_type",
        "effective_from",
        "effective_to",
        "currency",
        "input_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "output_per_mtok",
        "reasoning_per_mtok",
        "per_request_fee",
        "long_context_threshold_tokens",
        "long_context_input_per_mtok",
        "long_context_cache_read_per_mtok",
        "long_context_cache_write_per_mtok",
        "long_context_output_per_mtok",
        "per_gpu_second",
        "priority",
    )

    def is_effective_at(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)


def cost_of(usage: Usage, price: Price) -> Decimal:
    """The exact cost of `usage` at `price`, in the price's currency, unrounded.

    Each canonical bucket is billed once: uncached input at the input rate, cache reads and
    the two kinds of cache writes at their own rates, visible output at the output rate and
    reasoning at the reasoning rate (the output rate when none is set). Missing cache rates fall
    back to the input rate: charging full price is wrong in the safe direction, a silent
    discount is not. Above the long-context threshold the whole request moves to the tier rates.
    """
    input_rate = price.input_per_mtok
    read_rate = price.cache_read_per_mtok
    write_rate = price.cache_write_per_mtok
    output_rate = price.output_per_mtok
    if price.long_context_threshold_tokens is not None and usage.input_tokens > price.long_context_threshold_tokens:
        input_rate = _first_set(price.long_context_input_per_mtok, input_rate)
        read_rate = _first_set(price.long_context_cache_read_per_mtok, read_rate)
        write_rate = _first_set(price.long_context_cache_write_per_mtok, write_rate)
        output_rate = _first_set(price.long_context_output_per_mtok, output_rate)
    read_rate = _first_set(read_rate, input_rate)
    write_rate = _first_set(write_rate, input_rate)
    write_1h_rate = _first_set(price.cache_write_1h_per_mtok, write_rate)
    reasoning_rate = _first_set(price.reasoning_per_mtok, output_rate)

    write_1h = usage.cache_creation_1h_input_tokens
    write_5m = usage.cache_creation_input_tokens - write_1h
    token_cost = (
        usage.uncached_input_tokens * input_rate
        + usage.cache_read_input_tokens * read_rate
        + write_5m * write_rate
        + write_1h * write_1h_rate
        + (usage.output_tokens - usage.reasoning_tokens) * output_rate
        + usage.reasoning_tokens * reasoning_rate
    ) / MILLION
    cost = token_cost + price.per_request_fee
    if price.per_gpu_second is not None and usage.compute_ms:
        cost += usage.compute_ms * price.per_gpu_second / MS_PER_SECOND
    return cost


def _first_set(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


class PricedCost(NamedTuple):
    """What pricing one call came to. A NamedTuple, not a dataclass: ingest builds one per event
    and a frozen dataclass costs three times as much to make."""

    cost: Decimal | None
    currency: str
    provenance: str
    price_id: int | None

    def to_fields(self) -> dict[str, object]:
        """The UsageEvent column values."""
        return {
            "cost": self.cost,
            "currency": self.currency,
            "cost_provenance": self.provenance,
            "price_id": self.price_id,
        }


# Distinct (provider, model) names a book remembers the candidates of, as spelled and as
# normalised (callers choose them: unknown names must not grow a process without bound).
MAX_SPELLINGS = 4096


class PriceBook:
    """One tenant's prices, indexed for lookups in microseconds.

    `find` memoises the candidate list per (provider, model), so the regular expressions of a
    provider are tried once per distinct model name, not once per event.
    """

    def __init__(self, prices: Iterable[Price], *, tenant_id: int | None = None) -> None:
        self.tenant_id = tenant_id
        self._exact: dict[tuple[str, str], list[Price]] = {}
        self._regex: dict[str, list[tuple[re.Pattern[str], Price]]] = {}
        for price in prices:
            provider = normalise_provider(price.provider)
            if price.match_type == "regex":
                pattern = re.compile(price.model_pattern, re.IGNORECASE)
                self._regex.setdefault(provider, []).append((pattern, price))
            else:
                key = (provider, normalise_model(provider, price.model_pattern))
                self._exact.setdefault(key, []).append(price)
        self._candidates: dict[tuple[str, str], tuple[Price, ...]] = {}
        # The same, keyed by the names as callers spell them: skips normalising per event.
        self._as_spelled: dict[tuple[str, str], tuple[Price, ...]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _rank(price: Price) -> tuple:
        # Sorted descending: tenant overrides first, exact before regex, then priority, then the
        # latest start (the effective-time filter picks among the versions of one model).
        return (price.tenant_id is not None, price.match_type != "regex", price.priority, price.effective_from)

    def candidates(self, provider: str, model: str) -> tuple[Price, ...]:
        spelled = (provider, model)
        found = self._as_spelled.get(spelled)
        if found is None:
            found = self._normalised_candidates(provider, model)
            with self._lock:
                if len(self._as_spelled) < MAX_SPELLINGS:  # callers' spellings are not bounded
                    self._as_spelled[spelled] = found
        return found

    def _normalised_candidates(self, provider: str, model: str) -> tuple[Price, ...]:
        provider = normalise_provider(provider)
        model = normalise_model(provider, model)
        key = (provider, model)
        found = self._candidates.get(key)
        if found is None:
            matches = list(self._exact.get(key, ()))
            matches += [p for pattern, p in self._regex.get(provider, ()) if pattern.fullmatch(model)]
            found = tuple(sorted(matches, key=self._rank, reverse=True))
            with self._lock:
                if len(self._candidates) < MAX_SPELLINGS:
                    self._candidates[key] = found
        return found

    def find(self, provider: str, model: str, at: datetime) -> Price | None:
        for price in self.candidates(provider, model):
            if price.is_effective_at(at):
                return price
        return None


def price_usage(
    *,
    book: PriceBook,
    provider: str,
    model: str,
    at: datetime,
    usage: Usage,
    reported_cost: Decimal | None = None,
    reported_currency: str = "",
    estimated: bool = False,
) -> PricedCost:
    """Price one call. Our own price wins when one matches (provenance `computed`, or
    `estimated` when the usage is incomplete, e.g. a cancelled stream); otherwise a
    caller-reported cost is used as `reported`; otherwise the call is `unpriced` with a NULL
    cost, counted and alerted on, never a silent zero."""
    price = book.find(provider, model, at)
    if price is not None:
        provenance = Provenance.ESTIMATED if estimated else Provenance.COMPUTED
        return PricedCost(cost_of(usage, price), price.currency, provenance, price.id)
    if reported_cost is not None:
        return PricedCost(reported_cost, reported_currency or "USD", Provenance.REPORTED, None)
    return PricedCost(None, "USD", Provenance.UNPRICED, None)


# --- Loading books from the database, cached per process --------------------------------------

_VERSION_KEY = "pricing:version"
_books: dict[int | None, tuple[object, PriceBook]] = {}
_books_lock = threading.Lock()


def bump_price_version() -> None:
    """Invalidate every process's price books (called whenever a ModelPrice row changes).

    The version lives in the shared cache (Redis in production) so gunicorn and Celery
    processes all notice; the embedded default's local-memory cache is per process, which is
    right there because there is one process.
    """
    try:
        try:
            cache.incr(_VERSION_KEY)
        except ValueError:
            cache.set(_VERSION_KEY, 1, timeout=None)
    except Exception:  # shared cache down: processes reload from the database meanwhile (below)
        log.error("price version not bumped: shared cache unavailable", exc_info=True)


def _current_version() -> object:
    """The shared price version; with the shared cache down, a fresh object each call, so every
    check reloads the book from the database (prices stay right during a Redis outage, at one
    query per check; ingest checks at most every PRICE_BOOK_MAX_AGE_S)."""
    try:
        return cache.get(_VERSION_KEY, 0)
    except Exception:
        log.warning("price version unavailable (shared cache down); reloading price book", exc_info=True)
        return object()


def load_price_book(tenant_id: int | None) -> PriceBook:
    from chargeback.models import ModelPrice

    rows = ModelPrice.objects.for_tenant(tenant_id).values_list(*Price.FIELDS)
    return PriceBook((Price(*row) for row in rows), tenant_id=tenant_id)


_checked_at: dict[int | None, float] = {}


def get_price_book(tenant_id: int | None, *, max_age_s: float = 0.0) -> PriceBook:
    """The tenant's price book, rebuilt only when a price changed since it was loaded.

    `max_age_s` lets a hot path (ingest) skip the shared-cache version check when it checked
    less than that many seconds ago, so a price change reaches it within `max_age_s`.
    """
    entry = _books.get(tenant_id)
    if max_age_s and entry is not None and time.monotonic() - _checked_at.get(tenant_id, -math.inf) < max_age_s:
        return entry[1]
    version = _current_version()
    if entry is None or entry[0] != version:
        entry = (version, load_price_book(tenant_id))
        with _books_lock:
            _books[tenant_id] = entry
    _checked_at[tenant_id] = time.monotonic()
    return entry[1]

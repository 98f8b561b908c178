"""The shared price catalogue, seeded from the maintained `genai-prices` package.

`genai-prices` ships its data inside the wheel, so loading needs no network. Each catalogue
model becomes one ModelPrice row per price period (`tenant=None`, `source=catalogue`):

- match clauses (equals / starts_with / ends_with / contains / regex / or / and) become one
  exact name or one regular expression matched against the whole lower-cased model name;
- the catalogue picks the *first* matching model of a provider, so earlier models get a
  higher `priority`;
- start-date conditional prices become effective-dated rows (each closes when the next opens);
- tiered prices (e.g. above 200k input tokens) become the long-context tier;
- units we do not meter (audio, images, web searches) are left out and named in `notes`.

Loading is an idempotent upsert: rows are never deleted, because usage events reference the
row that priced them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from chargeback.models import ModelPrice
from chargeback.pricing import bump_price_version

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# genai-prices key -> (our field, long-context field or None, divisor to per-unit)
PRICE_KEYS: dict[str, tuple[str, str | None]] = {
    "input_mtok": ("input_per_mtok", "long_context_input_per_mtok"),
    "cache_read_mtok": ("cache_read_per_mtok", "long_context_cache_read_per_mtok"),
    "cache_write_mtok": ("cache_write_per_mtok", "long_context_cache_write_per_mtok"),
    "cache_write_1h_mtok": ("cache_write_1h_per_mtok", None),
    "output_mtok": ("output_per_mtok", "long_context_output_per_mtok"),
    "output_reasoning_mtok": ("reasoning_per_mtok", None),
}
VALUE_FIELDS = (
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
    "effective_to",
    "notes",
    "source",
)


def clause_regex(clause: Any) -> str:
    """A regex that full-matches exactly the names the genai-prices clause matches."""
    name = type(clause).__name__
    if name == "ClauseEquals":
        return re.escape(clause.equals.lower())
    if name == "ClauseStartsWith":
        return re.escape(clause.starts_with.lower()) + ".*"
    if name == "ClauseEndsWith":
        return ".*" + re.escape(clause.ends_with.lower())
    if name == "ClauseContains":
        return ".*" + re.escape(clause.contains.lower()) + ".*"
    if name == "ClauseRegex":
        return ".*(?:" + clause.regex + ").*"  # genai-prices uses re.search
    if name == "ClauseOr":
        return "(?:" + "|".join(clause_regex(c) for c in clause.or_) + ")"
    if name == "ClauseAnd":
        return "".join(rf"(?=(?:{clause_regex(c)})\Z)" for c in clause.and_) + ".*"
    raise ValueError(f"Unknown genai-prices match clause {name}")


def match_of(clause: Any) -> tuple[str, str]:
    """(match_type, pattern): a lone equals clause stays an exact match."""
    if type(clause).__name__ == "ClauseEquals":
        return ModelPrice.MatchType.EXACT, clause.equals.lower()
    return ModelPrice.MatchType.REGEX, clause_regex(clause)


def price_values(model_price: Any) -> tuple[dict[str, Any], list[str]]:
    """Our price fields for one genai-prices ModelPrice, and the names of units left out."""
    values: dict[str, Any] = {}
    skipped: list[str] = []
    for key, value in model_price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        if key == "requests_kcount":
            values["per_request_fee"] = value / 1000
            continue
        if key not in PRICE_KEYS:
            skipped.append(key)
            continue
        base_field, tier_field = PRICE_KEYS[key]
        if type(value).__name__ == "TieredPrices":
            values[base_field] = value.base
            if tier_field and value.tiers:
                # One long-context tier: the first threshold (200k in every catalogue entry
                # with tiers today); the tier price applies when input exceeds it.
                tier = value.tiers[0]
                values["long_context_threshold_tokens"] = tier.start
                values[tier_field] = tier.price
        else:
            values[base_field] = value
    return values, skipped


@dataclass
class CatalogueRow:
    provider: str
    model_pattern: str
    match_type: str
    effective_from: datetime
    values: dict[str, Any] = field(default_factory=dict)


def _start(constraint: Any) -> datetime | None:
    if constraint is None:
        return EPOCH
    if type(constraint).__name__ == "StartDateConstraint":
        start: date = constraint.start_date
        return datetime(start.year, start.month, start.day, tzinfo=UTC)
    return None  # time-of-day prices (off-peak discounts) are not modelled


def catalogue_rows(providers: list[Any] | None = None) -> Iterator[CatalogueRow]:
    if providers is None:
        from genai_prices.data import providers as bundled

        providers = bundled
    for provider in providers:
        count = len(provider.models)
        for index, model in enumerate(provider.models):
            match_type, pattern = match_of(model.match)
            periods = model.prices if isinstance(model.prices, list) else [_Always(model.prices)]
            dated = [(s, p.prices) for p in periods if (s := _start(p.constraint)) is not None]
            dated.sort(key=lambda item: item[0])
            for position, (start, prices) in enumerate(dated):
                values, skipped = price_values(prices)
                values.update(
                    currency="USD",
                    priority=count - index,
                    source=ModelPrice.Source.CATALOGUE,
                    effective_to=dated[position + 1][0] if position + 1 < len(dated) else None,
                    notes=(
                        f"genai-prices {model.id}" + (f"; not metered: {', '.join(sorted(skipped))}" if skipped else "")
                    )[:500],
                )
                yield CatalogueRow(provider.id, pattern, match_type, start, values)


@dataclass
class _Always:
    prices: Any
    constraint: None = None


def internal_rows() -> list[CatalogueRow]:
    """Local models have no list price: an editable internal rate per GPU-second of reported
    compute (Ollama durations), with tokens free, matching any Ollama model name."""
    rate = Decimal(settings.LLMOBS_DEFAULT_GPU_SECOND_RATE)
    return [
        CatalogueRow(
            "ollama",
            ".*",
            ModelPrice.MatchType.REGEX,
            EPOCH,
            {
                "currency": "USD",
                "per_gpu_second": rate,
                "priority": -1,
                "source": ModelPrice.Source.INTERNAL,
                "notes": "Internal on-prem rate per GPU-second; edit to your hardware's cost.",
            },
        )
    ]


@dataclass
class LoadResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


PRICE_QUANTUM = Decimal("1e-10")  # ModelPrice stores 10 decimal places


def _stored(value: Any) -> Any:
    """Some catalogue prices were derived from floats (0.18000000000000002); store them at the
    column's precision so a reload compares equal instead of "updating" every time."""
    return value.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_UP) if isinstance(value, Decimal) else value


def _defaults(values: dict[str, Any]) -> dict[str, Any]:
    blank = {
        name: None
        for name in VALUE_FIELDS
        if name
        not in ("currency", "priority", "notes", "source", "input_per_mtok", "output_per_mtok", "per_request_fee")
    }
    base = {"input_per_mtok": Decimal(0), "output_per_mtok": Decimal(0), "per_request_fee": Decimal(0), "notes": ""}
    return {**blank, **base, **{k: _stored(v) for k, v in values.items()}}


@transaction.atomic
def load_catalogue(*, providers: list[Any] | None = None, progress=None) -> LoadResult:
    """Upsert the catalogue rows. Catalogue rows only: tenant overrides are never touched."""
    existing = {
        (p.provider, p.model_pattern, p.match_type, p.effective_from): p
        for p in ModelPrice.objects.filter(tenant__isnull=True)
    }
    result = LoadResult()
    to_create: list[ModelPrice] = []
    to_update: list[ModelPrice] = []
    rows = _first_per_key([*catalogue_rows(providers), *internal_rows()])
    for number, row in enumerate(rows, 1):
        values = _defaults(row.values)
        current = existing.get((row.provider, row.model_pattern, row.match_type, row.effective_from))
        if current is None:
            price = ModelPrice(
                provider=row.provider,
                model_pattern=row.model_pattern,
                match_type=row.match_type,
                effective_from=row.effective_from,
                **values,
            )
            to_create.append(price)
            result.created += 1
        elif any(_differs(getattr(current, k), v) for k, v in values.items()):
            if current.source == ModelPrice.Source.INTERNAL:
                # An admin may have edited the internal rate: keep their number.
                result.unchanged += 1
                continue
            for key, value in values.items():
                setattr(current, key, value)
            to_update.append(current)
            result.updated += 1
        else:
            result.unchanged += 1
        if progress and number % 500 == 0:
            progress(number, len(rows))
    ModelPrice.objects.bulk_create(to_create, batch_size=500)
    if to_update:
        ModelPrice.objects.bulk_update(to_update, fields=list(VALUE_FIELDS), batch_size=500)
    transaction.on_commit(bump_price_version)
    return result


def _first_per_key(rows: list[CatalogueRow]) -> list[CatalogueRow]:
    """Two catalogue models can translate to the same match; like the catalogue's own
    first-match rule, the earlier one wins."""
    seen: set[tuple] = set()
    unique = []
    for row in rows:
        key = (row.provider, row.model_pattern, row.match_type, row.effective_from)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _differs(current: Any, new: Any) -> bool:
    if isinstance(current, Decimal) or isinstance(new, Decimal):
        return (None if current is None else Decimal(current)) != (None if new is None else Decimal(new))
    return current != new

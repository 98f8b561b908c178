"""Usage-event ingest: strict, lean validation of caller JSON into rows, pricing at ingest, and
the idempotent bulk writer that every source shares (the ingest API, OTLP, the gateway).

The hot path avoids per-object framework work on purpose (DRF serializers and `bulk_create`
cap at ~10k events/s on two cores, see shared/reference/performance-baselines.md): events are
checked by hand into `EventRow` tuples, priced against one price book per batch, and written
with COPY. On PostgreSQL each event's (tenant, event_id) is first claimed in the idempotency
ledger (the usage table is partitioned by month, telemetry/partitions.py); a batch holding an
id already stored goes through a staging table and
`INSERT INTO ledger … ON CONFLICT DO NOTHING RETURNING` → `INSERT … WHERE event_id IN (new)`,
whose row count is the exact number of new events even under concurrent submissions of the
same ids. SQLite uses `INSERT … ON CONFLICT (tenant_id, event_id) DO NOTHING`.
"""

from __future__ import annotations

import functools
import hmac
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, NamedTuple

import msgspec
import orjson
import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from psycopg import errors as psycopg_errors

from chargeback.pricing import PriceBook, get_price_book, price_usage
from chargeback.usage import Usage, UsageError
from telemetry import groupcommit, metrics, partitions, retention
from telemetry.models import UsageEvent

MAX_EVENTS_PER_BATCH = 5000
MAX_TAGS = 32
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 256
# Larger counts are typing errors, and would overflow the BIGINT columns long before that.
MAX_TOKENS = 10**12
MAX_MS = 2**31 - 1  # PositiveIntegerField is a 32-bit INTEGER column
# Clock skew is tolerated up to a day; later timestamps are bugs (often local time marked as Z)
# that would land spend in a future billing period.
MAX_FUTURE = timedelta(days=1)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# Caller-reported costs fit the MONEY columns (20 digits, 10 after the point) exactly.
COST_LIMIT = Decimal(10**10)
COST_RE = re.compile(r"\d{1,10}(\.\d{1,10})?")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
HEX_RE = re.compile(r"[0-9a-fA-F]+")

STATUSES = frozenset(UsageEvent.Status.values)
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "reasoning_tokens",
    "compute_ms",
)
USAGE_FIELD_SET = frozenset(USAGE_FIELDS)
# Optional strings: field name → maximum length (the column's max_length).
STRING_FIELDS = {
    "user": 255,
    "requested_model": 255,
    "operation_id": 64,
    "error_type": 128,
    "session_id": 128,
    "feature": 128,
    "prompt_version": 64,
}
EVENT_FIELDS = frozenset(
    {
        "event_id",
        "timestamp",
        "department",
        "provider",
        "model",
        "operation",
        "usage",
        "latency_ms",
        "ttft_ms",
        "status",
        "cost",
        "currency",
        "trace_id",
        "span_id",
        "parent_span_id",
        "tags",
        *STRING_FIELDS,
    }
)


class EventRow(NamedTuple):
    """One usage event ready to write, in the column order of the COPY. Field names are the
    UsageEvent column names, so `EventRow(..., **usage.to_fields(), **priced.to_fields())`
    builds one from a canonical `Usage` and a `PricedCost`."""

    event_id: str
    source: str
    occurred_at: datetime
    provider: str
    model: str
    operation: str = "chat"
    requested_model: str = ""
    operation_id: str = ""
    department_id: int | None = None
    department_code: str = ""
    user_ref: str = ""
    api_key_id: int | None = None
    api_key_prefix: str = ""
    latency_ms: int | None = None
    ttft_ms: int | None = None
    status: str = "ok"
    error_type: str = ""
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    compute_ms: int | None = None
    cost: Decimal | None = None
    currency: str = "USD"
    cost_provenance: str = "unpriced"
    price_id: int | None = None
    reported_cost: Decimal | None = None
    reported_currency: str = ""
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""
    session_id: str = ""
    feature: str = ""
    tags: Mapping[str, str] | None = None
    prompt_version: str = ""
    sampling: str = ""  # gateway calls only (telemetry/sampling.py)


COLUMNS = EventRow._fields
_make_row = EventRow._make
ZERO_USAGE = Usage()
TAGS_INDEX = COLUMNS.index("tags")
EVENT_ID_INDEX = 0


@dataclass(frozen=True, slots=True)
class WriteResult:
    accepted: int
    duplicates: int


@dataclass(slots=True)
class Rejection:
    index: int
    event_id: str | None
    errors: dict[str, list[str]]

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "event_id": self.event_id, "errors": self.errors}


@dataclass(slots=True)
class BatchResult:
    accepted: int
    duplicates: int
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_dict() for r in self.rejected],
        }


class BatchError(Exception):
    """The request as a whole is unusable (not JSON, not events, too many events)."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class EventContext:
    """Everything validation needs besides the event itself, resolved once per batch."""

    tenant_id: int
    source: str
    book: PriceBook
    departments: Mapping[str, int]
    now: datetime
    api_key_id: int | None = None
    api_key_prefix: str = ""
    bound_department: tuple[int, str] | None = None  # (id, code) of the key's department
    default_user: str = ""
    # Oldest accepted occurrence time: EARLIEST, or the raw-retention limit (telemetry/retention.py).
    earliest: datetime = EARLIEST


# --- Parsing ------------------------------------------------------------------------------------


def parse_batch(body: bytes) -> list[Any]:
    """The events of a request body: a JSON array, `{"events": [...]}` or one event object."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BatchError("malformed", f"The body is not valid JSON: {exc}.") from None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        if "events" in data:
            items = data["events"]
            if not isinstance(items, list):
                raise BatchError("invalid", "events: must be an array of event objects.")
            extra = sorted(set(data) - {"events"})
            if extra:
                raise BatchError("invalid", f"Unknown top-level field(s) beside events: {', '.join(extra)}.")
        else:
            items = [data]
    else:
        raise BatchError("invalid", 'The body must be an event object, an array of events or {"events": [...]}.')
    if not items:
        raise BatchError("invalid", "The batch contains no events.")
    if len(items) > MAX_EVENTS_PER_BATCH:
        raise BatchError(
            "too_many_events",
            f"A batch holds at most {MAX_EVENTS_PER_BATCH} events; this one has {len(items)}.",
            status=413,
        )
    return items


# --- Validation (pure) --------------------------------------------------------------------------


def _string(value: Any, limit: int, *, required: bool = False) -> tuple[str, str | None]:
    """(value, error) for a string field; PostgreSQL text cannot hold NUL, so it is refused here."""
    if value is None:
        return "", ("is required." if required else None)
    if not isinstance(value, str):
        return "", f"must be a string, not {_type_name(value)}."
    if required and not value:
        return "", "must not be empty."
    if len(value) > limit:
        return "", f"must be at most {limit} characters (got {len(value)})."
    if "\x00" in value:
        return "", "must not contain NUL characters."
    return value, None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _count(value: Any, limit: int) -> tuple[int, str | None]:
    """A non-negative JSON integer; booleans, fractions and strings are refused (they mis-bill)."""
    if type(value) is int:
        if value < 0:
            return 0, "must not be negative."
        if value > limit:
            return 0, f"must be at most {limit}."
        return value, None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= limit:
        return int(value), None
    return 0, f"must be a non-negative integer, not {_type_name(value)}."


def parse_timestamp(value: Any, *, now: datetime, earliest: datetime = EARLIEST) -> tuple[datetime | None, str | None]:
    if isinstance(value, datetime):
        moment = value
    elif not isinstance(value, str):
        return None, "is required, as an RFC 3339 date-time with offset (e.g. 2025-01-31T12:00:00Z)."
    else:
        if len(value) < 19 or value[4] != "-" or value[10] not in "Tt ":
            return None, f"{value[:40]!r} is not an RFC 3339 date-time (e.g. 2025-01-31T12:00:00Z)."
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None, f"{value[:40]!r} is not an RFC 3339 date-time (e.g. 2025-01-31T12:00:00Z)."
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None, "must include a UTC offset (Z or ±hh:mm)."
    if moment < EARLIEST:
        return None, "must not be before 2000-01-01."
    if moment < earliest:
        # Its day's raw rows may already be purged: re-rolling it would replace the kept rollup.
        return None, f"must not be before {earliest:%Y-%m-%d} (raw events older than the retention are purged)."
    if moment > now + MAX_FUTURE:
        return None, "must not be more than a day in the future."
    return moment, None


def _hex_id(value: Any, length: int) -> tuple[str, str | None]:
    if value is None or value == "":
        return "", None
    if not isinstance(value, str) or len(value) != length or not HEX_RE.fullmatch(value):
        return "", f"must be {length} hexadecimal characters."
    return value.lower(), None


def _cost(value: Any) -> tuple[Decimal | None, str | None]:
    if value is None:
        return None, None
    if type(value) is int and 0 <= value < 10**10:
        return Decimal(value), None
    if isinstance(value, str) and COST_RE.fullmatch(value):
        try:
            return Decimal(value), None
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            pass
    if isinstance(value, float):
        return None, 'must be a decimal string such as "0.0123" (JSON numbers with fractions lose precision).'
    return None, "must be a non-negative decimal string with at most 10 digits before and after the point."


def _tags(value: Any) -> tuple[dict[str, str] | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, f"must be an object of string values, not {_type_name(value)}."
    if len(value) > MAX_TAGS:
        return None, f"must have at most {MAX_TAGS} entries (got {len(value)})."
    for key, item in value.items():
        if not key or len(key) > MAX_TAG_KEY_CHARS or "\x00" in key:
            return None, f"keys must be 1-{MAX_TAG_KEY_CHARS} characters without NUL ({key[:40]!r})."
        if not isinstance(item, str):
            return None, f"{key!r} must be a string, not {_type_name(item)}."
        if len(item) > MAX_TAG_VALUE_CHARS or "\x00" in item:
            return None, f"{key!r} must be at most {MAX_TAG_VALUE_CHARS} characters without NUL."
    return value, None


def _usage(value: Any, errors: dict[str, list[str]]) -> Usage | None:
    if isinstance(value, Usage):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors["usage"] = [f"must be an object, not {_type_name(value)}."]
        return None
    counts = dict.fromkeys(USAGE_FIELDS, 0)
    counts["compute_ms"] = None
    bad = False
    for name, raw in value.items():
        if name not in USAGE_FIELD_SET:
            errors[f"usage.{name}"] = ["is not a known usage field."]
            bad = True
            continue
        if raw is None:
            continue
        number, error = _count(raw, MAX_TOKENS)
        if error:
            errors[f"usage.{name}"] = [error]
            bad = True
        else:
            counts[name] = number
    if bad:
        return None
    try:
        return Usage(**counts).validated()
    except UsageError as exc:
        errors[f"usage.{exc.field}"] = [exc.message]
        return None


def validate_event(data: Any, *, context: EventContext) -> tuple[EventRow | None, dict[str, list[str]]]:
    """One event object → (row, {}) or (None, {field: [message]}). Pure: no database access.

    Well-formed events take `_fast_row`, a lean straight line with no error reporting; anything
    it does not accept goes through `_checked_event`, which names every problem (and still
    builds the row for the few shapes the fast path leaves to it, e.g. `5.0` tokens).
    """
    row = _fast_row(data, context)
    if row is not None:
        return row, {}
    return _checked_event(data, context=context)


STRING_ITEMS = tuple(STRING_FIELDS.items())


def _fast_row(data: Any, context: EventContext) -> EventRow | None:
    """The row for a well-formed event, or None to let `_checked_event` decide and explain.
    Never accepts what `_checked_event` would reject (tests compare the two)."""
    if type(data) is not dict or not data.keys() <= EVENT_FIELDS:
        return None
    get = data.get
    event_id = get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= 128 or "\x00" in event_id:
        return None
    occurred_at = _fast_time(get("timestamp"), context)
    if occurred_at is None:
        return None
    provider = get("provider")
    if type(provider) is not str or not 0 < len(provider) <= 64 or "\x00" in provider:
        return None
    model = get("model")
    if type(model) is not str or not 0 < len(model) <= 255 or "\x00" in model:
        return None
    operation = get("operation")
    if operation is not None and (type(operation) is not str or len(operation) > 32 or "\x00" in operation):
        return None
    department = _fast_department(get("department"), context)
    if department is None:
        return None
    strings = []
    for name, limit in STRING_ITEMS:
        value = get(name)
        if value is None:
            value = ""
        elif type(value) is not str or len(value) > limit or "\x00" in value:
            return None
        strings.append(value)
    latency_ms = get("latency_ms")
    if latency_ms is not None and (type(latency_ms) is not int or not 0 <= latency_ms <= MAX_MS):
        return None
    ttft_ms = get("ttft_ms")
    if ttft_ms is not None and (type(ttft_ms) is not int or not 0 <= ttft_ms <= MAX_MS):
        return None

    value = get("usage")
    if value is None:
        usage = ZERO_USAGE
    elif type(value) is Usage:
        usage = value
    elif type(value) is dict and value.keys() <= USAGE_FIELD_SET:
        counts = []
        for name in USAGE_FIELDS:
            count = value.get(name)
            if count is not None and (type(count) is not int or not 0 <= count <= MAX_TOKENS):
                return None
            counts.append(count)
        usage = _fast_usage(*counts)
        if usage is None:
            return None
    else:
        return None
    ids = _fast_ids(get("trace_id"), get("span_id"), get("parent_span_id"))
    if ids is None:
        return None
    tags = get("tags")
    if tags is not None:
        if type(tags) is not dict or len(tags) > MAX_TAGS:
            return None
        for key, value in tags.items():
            if not 0 < len(key) <= MAX_TAG_KEY_CHARS or "\x00" in key:
                return None
            if type(value) is not str or len(value) > MAX_TAG_VALUE_CHARS or "\x00" in value:
                return None
    return _finish_row(
        context,
        event_id,
        occurred_at,
        provider,
        model,
        operation,
        department,
        strings,
        get("status", "ok"),
        latency_ms,
        ttft_ms,
        usage,
        get("cost"),
        get("currency"),
        ids,
        tags,
    )


# The pieces of the fast path that `_fast_row` (objects from orjson, or Python callers) and
# `_struct_row` (events decoded by msgspec) share. Each returns None for "not accepted here".


def _fast_time(value: Any, context: EventContext) -> datetime | None:
    if type(value) is str:
        if len(value) < 19 or value[4] != "-" or value[10] not in "Tt ":
            return None
        try:
            occurred_at = datetime.fromisoformat(value)
        except ValueError:
            return None
    elif type(value) is datetime:
        occurred_at = value
    else:
        return None
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        return None
    if occurred_at < context.earliest or occurred_at > context.now + MAX_FUTURE:
        return None
    return occurred_at


def _fast_department(code: Any, context: EventContext) -> tuple[int | None, str] | None:
    bound = context.bound_department
    if bound is not None:
        if code is not None and code != bound[1]:
            return None
        return bound
    if type(code) is not str:
        return None
    department_id = context.departments.get(code)
    if department_id is None:
        return None
    return department_id, code


def _fast_usage(
    tokens_in: int | None,
    tokens_out: int | None,
    cache_read: int | None,
    cache_write: int | None,
    cache_write_1h: int | None,
    reasoning: int | None,
    compute_ms: int | None,
) -> Usage | None:
    """Counts in USAGE_FIELDS order, each already a non-negative int or None (= 0)."""
    tokens_in = tokens_in or 0
    tokens_out = tokens_out or 0
    cache_read = cache_read or 0
    cache_write = cache_write or 0
    cache_write_1h = cache_write_1h or 0
    reasoning = reasoning or 0
    if cache_read + cache_write > tokens_in or cache_write_1h > cache_write or reasoning > tokens_out:
        return None
    return Usage(tokens_in, cache_read, cache_write, cache_write_1h, tokens_out, reasoning, compute_ms)


def _fast_hex(value: Any, length: int) -> str | None:
    if not value:
        return "" if value is None or value == "" else None
    if type(value) is not str or len(value) != length or not HEX_RE.fullmatch(value):
        return None
    return value.lower()


def _fast_ids(trace_id: Any, span_id: Any, parent_span_id: Any) -> tuple[str, str, str] | None:
    ids = (_fast_hex(trace_id, 32), _fast_hex(span_id, 16), _fast_hex(parent_span_id, 16))
    return None if None in ids else ids


def _finish_row(
    context: EventContext,
    event_id: str,
    occurred_at: datetime,
    provider: str,
    model: str,
    operation: str | None,
    department: tuple[int | None, str],
    strings: Sequence[str],
    status: Any,
    latency_ms: int | None,
    ttft_ms: int | None,
    usage: Usage,
    cost: Any,
    currency: Any,
    ids: tuple[str, str, str],
    tags: Mapping[str, str] | None,
) -> EventRow | None:
    """The checks that need several fields, pricing, and the row."""
    provider = provider.strip().lower()
    if not provider:
        return None
    if type(status) is not str or status not in STATUSES:
        return None
    if cost is None:
        if currency is not None:
            return None
        reported_cost, reported_currency = None, ""
    else:
        if (type(cost) is str and COST_RE.fullmatch(cost)) or (type(cost) is int and 0 <= cost < 10**10):
            reported_cost = Decimal(cost)
        else:
            return None
        if currency is None:
            reported_currency = "USD"
        elif type(currency) is str and CURRENCY_RE.fullmatch(currency):
            reported_currency = currency
        else:
            return None
    priced = price_usage(
        book=context.book,
        provider=provider,
        model=model,
        at=occurred_at,
        usage=usage,
        reported_cost=reported_cost,
        reported_currency=reported_currency,
    )
    if priced.cost is not None and priced.cost >= COST_LIMIT:
        return None
    user, requested_model, operation_id, error_type, session_id, feature, prompt_version = strings
    return _make_row(
        (
            event_id,
            context.source,
            occurred_at,
            provider,
            model,
            operation or "chat",
            requested_model,
            operation_id,
            department[0],
            department[1],
            user or context.default_user,
            context.api_key_id,
            context.api_key_prefix,
            latency_ms,
            ttft_ms,
            status,
            error_type,
            usage.input_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_creation_1h_input_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
            usage.compute_ms,
            priced.cost,
            priced.currency,
            priced.provenance,
            priced.price_id,
            reported_cost,
            reported_currency,
            *ids,
            session_id,
            feature,
            tags,
            prompt_version,
            "",
        )
    )


def _checked_event(data: Any, *, context: EventContext) -> tuple[EventRow | None, dict[str, list[str]]]:
    if not isinstance(data, dict):
        return None, {"event": [f"must be an object, not {_type_name(data)}."]}
    errors: dict[str, list[str]] = {}
    unknown = data.keys() - EVENT_FIELDS
    for name in sorted(unknown):
        errors[name] = ["is not a known event field."]

    event_id, error = _string(data.get("event_id"), 128, required=True)
    if error:
        errors["event_id"] = [error]
    occurred_at, error = parse_timestamp(data.get("timestamp"), now=context.now, earliest=context.earliest)
    if error:
        errors["timestamp"] = [error]
    provider, error = _string(data.get("provider"), 64, required=True)
    if error:
        errors["provider"] = [error]
    elif not provider.strip():
        errors["provider"] = ["must not be blank."]
    model, error = _string(data.get("model"), 255, required=True)
    if error:
        errors["model"] = [error]
    operation, error = _string(data.get("operation"), 32)
    if error:
        errors["operation"] = [error]

    # Department: the key's binding wins; a named department must exist in *this* tenant.
    department_id: int | None = None
    code = data.get("department")
    bound = context.bound_department
    if bound is not None:
        if code is not None and code != bound[1]:
            errors["department"] = [f"This API key is bound to department {bound[1]!r}; got {str(code)[:64]!r}."]
        department_id, department_code = bound
    else:
        department_code, error = _string(code, 64, required=True)
        if error:
            errors["department"] = [error]
        else:
            department_id = context.departments.get(department_code)
            if department_id is None:
                errors["department"] = [f"Unknown department {department_code!r}."]

    strings: dict[str, str] = {}
    for name, limit in STRING_FIELDS.items():
        value, error = _string(data.get(name), limit)
        if error:
            errors[name] = [error]
        strings[name] = value

    status = data.get("status", "ok")
    if not isinstance(status, str) or status not in STATUSES:
        errors["status"] = [f"must be one of {', '.join(sorted(STATUSES))}."]
    latency_ms = ttft_ms = None
    if data.get("latency_ms") is not None:
        latency_ms, error = _count(data["latency_ms"], MAX_MS)
        if error:
            errors["latency_ms"] = [error]
    if data.get("ttft_ms") is not None:
        ttft_ms, error = _count(data["ttft_ms"], MAX_MS)
        if error:
            errors["ttft_ms"] = [error]

    usage = _usage(data.get("usage"), errors)

    reported_cost, error = _cost(data.get("cost"))
    if error:
        errors["cost"] = [error]
    reported_currency = ""
    currency = data.get("currency")
    if currency is not None:
        if not isinstance(currency, str) or not CURRENCY_RE.fullmatch(currency):
            errors["currency"] = ["must be an ISO 4217 code such as USD."]
        elif data.get("cost") is None:
            errors["currency"] = ["is only meaningful together with cost."]
        else:
            reported_currency = currency
    elif reported_cost is not None:
        reported_currency = "USD"

    trace_id, error = _hex_id(data.get("trace_id"), 32)
    if error:
        errors["trace_id"] = [error]
    span_id, error = _hex_id(data.get("span_id"), 16)
    if error:
        errors["span_id"] = [error]
    parent_span_id, error = _hex_id(data.get("parent_span_id"), 16)
    if error:
        errors["parent_span_id"] = [error]
    tags, error = _tags(data.get("tags"))
    if error:
        errors["tags"] = [error]

    if errors:
        return None, errors
    assert occurred_at is not None and usage is not None  # guaranteed when there are no errors
    provider = provider.strip().lower()
    priced = price_usage(
        book=context.book,
        provider=provider,
        model=model,
        at=occurred_at,
        usage=usage,
        reported_cost=reported_cost,
        reported_currency=reported_currency,
    )
    if priced.cost is not None and priced.cost >= COST_LIMIT:
        return None, {"usage": [f"prices to {priced.cost:.2f} {priced.currency}, beyond what a single call can cost."]}
    return (
        EventRow(
            event_id,
            context.source,
            occurred_at,
            provider,
            model,
            operation or "chat",
            strings["requested_model"],
            strings["operation_id"],
            department_id,
            department_code,
            strings["user"] or context.default_user,
            context.api_key_id,
            context.api_key_prefix,
            latency_ms,
            ttft_ms,
            status,
            strings["error_type"],
            usage.input_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_creation_1h_input_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
            usage.compute_ms,
            priced.cost,
            priced.currency,
            priced.provenance,
            priced.price_id,
            reported_cost,
            reported_currency,
            trace_id,
            span_id,
            parent_span_id,
            strings["session_id"],
            strings["feature"],
            tags,
            strings["prompt_version"],
        ),
        {},
    )


def validate_events(items: Sequence[Any], *, context: EventContext) -> tuple[list[EventRow], list[Rejection]]:
    """Validate and price a batch; rejected events keep their index in the request."""
    rows: list[EventRow] = []
    rejected: list[Rejection] = []
    for index, data in enumerate(items):
        row, errors = validate_event(data, context=context)
        if row is None:
            event_id = data.get("event_id") if isinstance(data, dict) else None
            rejected.append(Rejection(index, event_id if isinstance(event_id, str) else None, errors))
        else:
            rows.append(row)
    return rows, rejected


def department_codes(items: Iterable[Any]) -> set[str]:
    return {d for item in items if isinstance(item, dict) and isinstance(d := item.get("department"), str)}


# --- The whole-body fast path (msgspec) ----------------------------------------------------------
# The same limits as `_fast_row`, declared so msgspec checks them while it decodes, in C.
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
_Ms = Annotated[int, msgspec.Meta(ge=0, le=MAX_MS)]


def _text(limit: int, minimum: int = 0) -> Any:
    return Annotated[str, msgspec.Meta(min_length=minimum, max_length=limit)]


_Tags = Annotated[dict[_text(MAX_TAG_KEY_CHARS, 1), _text(MAX_TAG_VALUE_CHARS)], msgspec.Meta(max_length=MAX_TAGS)]


class _UsageFields(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    input_tokens: _Count | None = None
    output_tokens: _Count | None = None
    cache_read_input_tokens: _Count | None = None
    cache_creation_input_tokens: _Count | None = None
    cache_creation_1h_input_tokens: _Count | None = None
    reasoning_tokens: _Count | None = None
    compute_ms: _Count | None = None


# Built from STRING_FIELDS so the optional strings' limits cannot drift from `_fast_row`'s.
_EventFields = msgspec.defstruct(
    "_EventFields",
    [
        ("event_id", _text(128, 1)),
        ("timestamp", str),
        ("provider", _text(64, 1)),
        ("model", _text(255, 1)),
        ("department", str | None, None),
        ("operation", _text(32) | None, None),
        ("usage", _UsageFields | None, None),
        ("latency_ms", _Ms | None, None),
        ("ttft_ms", _Ms | None, None),
        ("status", str, "ok"),
        ("cost", str | int | None, None),
        ("currency", str | None, None),
        ("trace_id", str | None, None),
        ("span_id", str | None, None),
        ("parent_span_id", str | None, None),
        ("tags", _Tags | None, None),
        *((name, _text(limit) | None, None) for name, limit in STRING_FIELDS.items()),
    ],
    forbid_unknown_fields=True,
    gc=False,
)


_Wrapped = msgspec.defstruct("_Wrapped", [("events", list[_EventFields])], forbid_unknown_fields=True)


_decode_list = msgspec.json.Decoder(list[_EventFields]).decode
_decode_one = msgspec.json.Decoder(_EventFields).decode
_decode_wrapped = msgspec.json.Decoder(_Wrapped).decode


def decode_events(body: bytes) -> list[Any] | None:
    """The events of a body in which every event is well typed, or None (the shapes are
    `parse_batch`'s). A NUL anywhere (`\\u0000`: JSON has no other way to carry one) sends the
    body to the checked path, which names the field PostgreSQL could not store it in."""
    if b"\\u0000" in body:
        return None
    head = body[:1]
    if head.isspace():
        head = body.lstrip()[:1]
    try:
        if head == b"[":
            events = _decode_list(body)
        elif head == b"{":
            try:
                events = [_decode_one(body)]
            except msgspec.ValidationError:
                events = _decode_wrapped(body).events
        else:
            return None
    except msgspec.DecodeError:  # not JSON, or an event with a field not accepted as it is
        return None
    if not 0 < len(events) <= MAX_EVENTS_PER_BATCH:
        return None
    return events


def _struct_row(event: Any, context: EventContext) -> EventRow | None:
    """`_fast_row` for an event msgspec has already type- and range-checked."""
    occurred_at = _fast_time(event.timestamp, context)
    if occurred_at is None:
        return None
    department = _fast_department(event.department, context)
    if department is None:
        return None
    counts = event.usage
    if counts is None:
        usage = ZERO_USAGE
    else:
        usage = _fast_usage(
            counts.input_tokens,
            counts.output_tokens,
            counts.cache_read_input_tokens,
            counts.cache_creation_input_tokens,
            counts.cache_creation_1h_input_tokens,
            counts.reasoning_tokens,
            counts.compute_ms,
        )
        if usage is None:
            return None
    ids = _fast_ids(event.trace_id, event.span_id, event.parent_span_id)
    if ids is None:
        return None
    strings = (
        event.user or "",
        event.requested_model or "",
        event.operation_id or "",
        event.error_type or "",
        event.session_id or "",
        event.feature or "",
        event.prompt_version or "",
    )
    return _finish_row(
        context,
        event.event_id,
        occurred_at,
        event.provider,
        event.model,
        event.operation,
        department,
        strings,
        event.status,
        event.latency_ms,
        event.ttft_ms,
        usage,
        event.cost,
        event.currency,
        ids,
        event.tags,
    )


# --- Department lookup (cached per process) --------------------------------------------------------

# code → id only changes when an admin edits a department's code, which is rare; positive
# answers are kept a minute, unknown codes are always asked again so a new department works
# at once.
DEPARTMENT_TTL_SECONDS = 60.0
_departments: dict[tuple[int, str], tuple[int, float]] = {}
_departments_lock = threading.Lock()


def resolve_departments(*, tenant_id: int, codes: Iterable[str]) -> dict[str, int]:
    """Department ids by code, for codes that exist in this tenant (only this tenant)."""
    from chargeback.models import Department

    now = time.monotonic()
    found: dict[str, int] = {}
    missing: list[str] = []
    for code in codes:
        entry = _departments.get((tenant_id, code))
        if entry is not None and entry[1] > now:
            found[code] = entry[0]
        elif 0 < len(code) <= 64 and "\x00" not in code:  # PostgreSQL refuses NUL in a parameter
            missing.append(code)
    if missing:
        rows = Department.objects.filter(tenant_id=tenant_id, code__in=missing).values_list("code", "id")
        expires = now + DEPARTMENT_TTL_SECONDS
        with _departments_lock:
            for code, pk in rows:
                found[code] = pk
                _departments[(tenant_id, code)] = (pk, expires)
    return found


def clear_department_cache() -> None:
    with _departments_lock:
        _departments.clear()


# --- The domain entry point ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """The API key a batch arrived with, reduced to what attribution needs."""

    pk: int
    tenant_id: int
    prefix: str
    department_id: int | None = None
    department_code: str = ""
    username: str = ""
    rpm_limit: int | None = None

    @classmethod
    def of(cls, key: Any) -> Sender:
        """From an `ApiKey` (with department and user loaded) or a Sender."""
        if isinstance(key, Sender):
            return key
        department = key.department if key.department_id else None
        return cls(
            pk=key.pk,
            tenant_id=key.tenant_id,
            prefix=key.prefix,
            department_id=department.pk if department else None,
            department_code=department.code if department else "",
            username=key.user.get_username() if key.user_id else "",
            rpm_limit=key.rpm_limit,
        )


# Authentication runs on every ingest request; one narrow query (no model instances, no ORM
# compilation) keeps it a fraction of the ORM lookup's cost, and revocation still applies at once.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# A price change reaches ingest within this long (saves a cache round trip per request).
PRICE_BOOK_MAX_AGE_S = 1.0


@functools.cache
def _sender_sql() -> str:
    from django.contrib.auth import get_user_model

    from chargeback.models import ApiKey, Department

    user = get_user_model()._meta
    username = user.get_field(user.model.USERNAME_FIELD).column
    return (
        "SELECT k.id, k.tenant_id, k.prefix, k.key_hash, k.department_id, d.code, u."  # noqa: S608 - identifiers only
        f"{username}, k.rpm_limit, k.last_used_at FROM {ApiKey._meta.db_table} k "
        f"LEFT JOIN {Department._meta.db_table} d ON d.id = k.department_id "
        f"LEFT JOIN {user.db_table} u ON u.{user.pk.column} = k.user_id "
        "WHERE k.prefix = %s AND k.revoked_at IS NULL"
    )


# Senders found in the last SENDER_MAX_AGE_S seconds, by token digest: most ingest requests
# then cost no authentication query (one database round trip of the four a single event paid).
# A revoked or changed key is refused everywhere within that time, and at once in the process
# that revoked it (`forget_senders`). Unknown tokens are not remembered: always looked up.
SENDER_MAX_AGE_S = 1.0
_SENDER_CACHE_SIZE = 10_000
_senders: dict[str, tuple[float, Sender]] = {}


def forget_senders() -> None:
    _senders.clear()


def find_sender(token: str) -> Sender | None:
    """The active API key for a raw token, or None (unknown, malformed or revoked)."""
    from chargeback.models import ApiKey

    prefix = ApiKey.prefix_of(token)
    if prefix is None:
        return None
    digest = ApiKey.hash_token(token)
    cached = _senders.get(digest)
    clock = time.monotonic()
    if cached is not None and clock - cached[0] < SENDER_MAX_AGE_S:
        return cached[1]
    sender = _lookup_sender(prefix, digest)
    if sender is not None:
        if len(_senders) >= _SENDER_CACHE_SIZE:
            _senders.clear()
        _senders[digest] = (clock, sender)
    else:
        _senders.pop(digest, None)
    return sender


def _lookup_sender(prefix: str, digest: str) -> Sender | None:
    from chargeback.models import ApiKey

    with connection.cursor() as cursor:
        cursor.execute(_sender_sql(), [prefix])
        found = cursor.fetchall()
    for pk, tenant_id, prefix, key_hash, department_id, code, username, rpm_limit, last_used_at in found:
        if hmac.compare_digest(key_hash, digest):
            now = timezone.now()
            if isinstance(last_used_at, str):  # SQLite hands raw queries back as text (UTC)
                last_used_at = datetime.fromisoformat(last_used_at)
            if last_used_at is not None and last_used_at.tzinfo is None:
                last_used_at = last_used_at.replace(tzinfo=UTC)
            if last_used_at is None or now - last_used_at > LAST_USED_RESOLUTION:
                ApiKey.objects.filter(pk=pk).update(last_used_at=now)
            return Sender(pk, tenant_id, prefix, department_id, code or "", username or "", rpm_limit)
    return None


def context_for(sender: Sender, codes: Iterable[str], *, source: str = UsageEvent.Source.INGEST) -> EventContext:
    """What validating and pricing a batch sent with `sender`, naming departments `codes`,
    needs, looked up once per batch."""
    tenant_id = sender.tenant_id
    bound = sender.department_id is not None
    now = timezone.now()
    return EventContext(
        tenant_id=tenant_id,
        source=source,
        book=get_price_book(tenant_id, max_age_s=PRICE_BOOK_MAX_AGE_S),
        departments={} if bound else resolve_departments(tenant_id=tenant_id, codes=codes),
        now=now,
        earliest=retention.earliest_raw_write(now=now) or EARLIEST,
        api_key_id=sender.pk,
        api_key_prefix=sender.prefix,
        bound_department=(sender.department_id, sender.department_code) if bound else None,
        default_user=sender.username,
    )


def record_batch(*, key: Any, items: Sequence[Any], source: str = UsageEvent.Source.INGEST) -> BatchResult:
    """Validate, price and store a batch sent with API key `key` (an `ApiKey` or a `Sender`).
    Valid events are written in one transaction even when others are rejected; a batch with no
    valid event writes nothing."""
    sender = Sender.of(key)
    rows, rejected = validate_events(items, context=context_for(sender, department_codes(items), source=source))
    return _store(sender, source, rows, rejected)


def record_body(*, key: Any, body: bytes, source: str = UsageEvent.Source.INGEST) -> BatchResult | None:
    """`record_batch` for a whole request body in one step, when every event in it is valid:
    msgspec decodes and type-checks the body in C (`decode_events`) and `_struct_row` does the
    rest of `_fast_row`'s work, about half the CPU of `parse_batch` + `validate_events`.
    None when anything is not accepted, with nothing written: the caller then parses and
    validates event by event, which names every problem (tests compare the two paths)."""
    events = decode_events(body)
    if events is None:
        return None
    sender = Sender.of(key)
    codes = {event.department for event in events if event.department is not None}
    context = context_for(sender, codes, source=source)
    rows = []
    for event in events:
        row = _struct_row(event, context)
        if row is None:
            return None
        rows.append(row)
    return _store(sender, source, rows, [])


def _store(sender: Sender, source: str, rows: list[EventRow], rejected: list[Rejection]) -> BatchResult:
    if rejected:
        metrics.INGEST_EVENTS.labels(source, "rejected").inc(len(rejected))
    if not rows:
        return BatchResult(0, 0, rejected)
    written = write_events(tenant=sender.tenant_id, rows=rows)
    metrics.INGEST_EVENTS.labels(source, "accepted").inc(written.accepted)
    if written.duplicates:
        metrics.INGEST_EVENTS.labels(source, "duplicate").inc(written.duplicates)
    return BatchResult(written.accepted, written.duplicates, rejected)


# --- Writing -----------------------------------------------------------------------------------------

TABLE = UsageEvent._meta.db_table
STAGE = "llmobs_usage_stage"
_COLUMN_LIST = ", ".join(COLUMNS)
# Below this size one multi-row INSERT (one round trip, no transaction block) beats COPY.
SMALL_BATCH = 16

# A per-connection temporary table without indexes or constraints: COPY into it is cheap, and
# ON COMMIT DELETE ROWS empties it at every commit. Created with IF NOT EXISTS on each batch
# (a catalogue lookup) because a rolled-back transaction can take its creation with it.
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS "  # noqa: S608 - constants only
    f"SELECT {_COLUMN_LIST} FROM {TABLE} WITH NO DATA"
)
_COPY_STAGE = f"COPY {STAGE} ({_COLUMN_LIST}) FROM STDIN"
_TABLE_COLUMNS = ("tenant_id", "received_at", *COLUMNS)
# Binary: psycopg formats a row in about half the CPU of text (docs/PERFORMANCE.md "Ingest").
_COPY_TABLE = f"COPY {TABLE} ({', '.join(_TABLE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# jsonb's binary form is a version byte and the JSON text; the tags go pre-encoded as bytea
# (bytes as they are: binary COPY carries no types, the column's own decides how they are read).
_JSONB_VERSION = b"\x01"
_copy_oids: list[int] = []
# PostgreSQL: the table is partitioned by month and the ledger enforces (tenant, event_id)
# (telemetry/partitions.py). Every path claims the keys first, in event_id order, so two
# writers with overlapping ids wait on each other in the same order (no deadlock), and writes
# an event only if its key was new.
_COPY_KEYS = f"COPY {partitions.KEY_TABLE} (tenant_id, event_id) FROM STDIN"
_MOVE_STAGE = (
    f"WITH k AS (INSERT INTO {partitions.KEY_TABLE} (tenant_id, event_id) "  # noqa: S608 - constants only
    f'SELECT %s, event_id FROM {STAGE} ORDER BY event_id COLLATE "C" ON CONFLICT DO NOTHING RETURNING event_id) '
    f"INSERT INTO {TABLE} (tenant_id, received_at, {_COLUMN_LIST}) "
    f"SELECT %s, now(), {_COLUMN_LIST} FROM {STAGE} WHERE event_id IN (SELECT event_id FROM k)"
)


@functools.lru_cache(maxsize=1)
def values_sql() -> str:
    """A small batch in one statement (atomic by itself: no transaction block, one round trip).

    The rows travel as one JSON document (an array of objects keyed by column), which
    PostgreSQL turns into typed rows with `json_populate_recordset` against the table's own row
    type: the statement text is the same whatever the number of rows, so it is prepared once
    per session, and the client's work per row is one `orjson` object instead of binding 40
    parameters (a VALUES list of 64 rows cost psycopg ~0.2 ms a row in parsing and binding; this
    costs ~0.01 ms). Each value goes through its column type's input function with the column's
    modifier, so a string over a `varchar(n)` is refused, never cut. Rows carry their own
    tenant (the group writer mixes tenants); `received_at` is one value for all. The statement
    returns the `(tenant_id, event_id)` of each event it stored."""
    columns = f"tenant_id, {_COLUMN_LIST}"
    # `n` keeps the rows' order through the semi-join: ids follow it, so a gateway operation's
    # attempts stay in sequence whatever join the planner picks.
    return (
        f"WITH v AS (SELECT {columns}, ordinality AS n "  # noqa: S608 - constants only
        f"FROM json_populate_recordset(NULL::{TABLE}, %s::json) WITH ORDINALITY), "
        f"k AS (INSERT INTO {partitions.KEY_TABLE} (tenant_id, event_id) SELECT tenant_id, event_id FROM v "
        'ORDER BY tenant_id, event_id COLLATE "C" ON CONFLICT DO NOTHING RETURNING tenant_id, event_id) '
        f"INSERT INTO {TABLE} (received_at, {columns}) SELECT %s::timestamptz, {columns} FROM v "
        "WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM k) ORDER BY n RETURNING tenant_id, event_id"
    )


_VALUE_KEYS = ("tenant_id", *COLUMNS)


def value_rows(tenant_id: int, rows: Sequence[EventRow]) -> list[tuple[Any, ...]]:
    """`rows` as `(tenant_id, *columns)` tuples for `_insert_values`."""
    return [(tenant_id, *_json_tags(row)) for row in rows]


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: a JSON number would go through a float in some readers
    raise TypeError(f"{type(value).__name__} is not a column value")


def values_document(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """The JSON the statement reads: one object per row, tags (already JSON text) embedded as is."""
    tags = 1 + TAGS_INDEX
    return orjson.dumps(
        [
            dict(zip(_VALUE_KEYS, (*row[:tags], orjson.Fragment(row[tags]), *row[tags + 1 :]), strict=True))
            for row in rows
        ],
        default=_json_value,
    )


def _insert_values(rows: list[tuple[Any, ...]]) -> set[tuple[int, str]]:
    """`(tenant_id, *columns)` rows in one statement; the `(tenant_id, event_id)` it stored.
    `received_at` is stamped here, just before the commit, not when a request handed its rows to
    the group writer: the incremental rollup re-reads only SAFETY_LAG behind its watermark, so
    a row must not commit long after its stamp.

    The statement is bound on the server and prepared (psycopg's own cursor on Django's
    connection; Django's default cursor binds on the client, which cannot prepare)."""
    params = [values_document(rows).decode(), timezone.now()]
    sql = values_sql()
    connection.ensure_connection()
    start = time.monotonic()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        stored = set(cursor.fetchall())
    if connection.queries_logged:  # as Django's own cursors do (DEBUG, CaptureQueriesContext)
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - start:.3f}"})
    return stored


def _group_key(row: tuple[Any, ...]) -> tuple[int, str]:
    return row[0], row[1 + EVENT_ID_INDEX]


_group = groupcommit.GroupCommitter(_insert_values, key=_group_key)


def group_committer() -> groupcommit.GroupCommitter:
    return _group


def _dedupe(rows: Sequence[EventRow]) -> list[EventRow]:
    """First occurrence of each event_id wins; later ones are duplicates."""
    seen: dict[str, EventRow] = {}
    for row in rows:
        if row[EVENT_ID_INDEX] not in seen:
            seen[row[EVENT_ID_INDEX]] = row
    return list(seen.values())


def _tags_json(tags: Mapping[str, str] | None) -> bytes:
    """The tags column's JSON: no tags are an empty object, never NULL."""
    return orjson.dumps(tags) if tags else b"{}"


def _json_tags(row: EventRow) -> list[Any]:
    values = list(row)
    values[TAGS_INDEX] = _tags_json(values[TAGS_INDEX]).decode()
    return values


def row_of(event: UsageEvent) -> EventRow:
    """The row of an unsaved UsageEvent (the gateway's recorder writes through `write_events`
    too: COPY costs a fifth of `bulk_create`'s Python time per row, and that time holds the GIL
    against the gateway's request threads)."""
    return _make_row([getattr(event, name) for name in COLUMNS])


def write_events(*, tenant: Any, rows: Sequence[EventRow]) -> WriteResult:
    """Store `rows` for `tenant` (a Tenant or its id) idempotently and atomically.

    An event_id already stored for the tenant, or repeated inside `rows`, is a duplicate: it is
    not written and does not change anything. Counts are exact under concurrent callers.
    """
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    unique = _dedupe(rows)
    if not unique:
        return WriteResult(0, len(rows))
    if connection.vendor == "postgresql":
        inserted = _write_postgresql(tenant_id, unique)
    else:
        inserted = _write_portable(tenant_id, unique)
    return WriteResult(inserted, len(rows) - inserted)


def _write_postgresql(tenant_id: int, rows: list[EventRow]) -> int:
    # Ids are claimed in the ledger in event_id order, so two transactions claiming overlapping
    # ids always wait on each other in the same order (no deadlock); the events themselves keep
    # the caller's order (their ids follow it: a gateway operation's attempts stay in sequence).
    if len(rows) <= SMALL_BATCH:
        # One statement is atomic by itself: no transaction block, one round trip. Outside a
        # caller's transaction it goes through this process's group writer, which shares the
        # statement and its commit with the requests of the other threads (telemetry/groupcommit.py).
        params = value_rows(tenant_id, rows)
        if settings.LLMOBS_INGEST_GROUP_COMMIT and not connection.in_atomic_block:
            return len(_group.submit(params))
        return len(_insert_values(params))
    # Fast path: COPY the keys into the ledger, then the events straight into the table (bulk
    # heap and WAL writes, about a third cheaper than INSERT … SELECT). It is all-or-nothing: if
    # any id is already stored, or is committed by a concurrent request meanwhile, the ledger's
    # primary key fails it and the staging path below skips exactly the ids that exist. Either
    # way the ledger's constraint decides, never a check.
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            now = timezone.now()
            with cursor.copy(_COPY_KEYS) as copy:
                write_row = copy.write_row
                for event_id in sorted(map(_event_id, rows)):
                    write_row((tenant_id, event_id))
            oids = _table_copy_oids(cursor)
            with cursor.copy(_COPY_TABLE) as copy:
                copy.set_types(oids)
                write_row = copy.write_row
                for row in rows:
                    write_row(_binary_values(tenant_id, now, row))
        return len(rows)
    except (DatabaseError, psycopg_errors.Error) as exc:
        # COPY runs on psycopg's own object, so its errors arrive unwrapped by Django.
        if not _is_retryable(exc):
            raise
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CREATE_STAGE)
        with cursor.copy(_COPY_STAGE) as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(_json_tags(row))
        cursor.execute(_MOVE_STAGE, [tenant_id, tenant_id])
        inserted = cursor.rowcount
        if nested:
            # Inside a caller's transaction no commit empties the stage before our next use.
            cursor.execute(f"TRUNCATE {STAGE}")
    return inserted


def _event_id(row: EventRow) -> str:
    return row[EVENT_ID_INDEX]


def _table_copy_oids(cursor: Any) -> list[int]:
    """Each COPY column's type, read from the catalogue once per process: a binary COPY must
    send every value in its column's own format, with no cast."""
    if not _copy_oids:
        cursor.execute(
            "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            [TABLE],
        )
        types = dict(cursor.fetchall())
        jsonb, bytea = psycopg.postgres.types["jsonb"].oid, psycopg.postgres.types["bytea"].oid
        _copy_oids[:] = [bytea if types[name] == jsonb else types[name] for name in _TABLE_COLUMNS]
    return _copy_oids


def _binary_values(tenant_id: int, now: datetime, row: EventRow) -> tuple[Any, ...]:
    tags = _JSONB_VERSION + _tags_json(row[TAGS_INDEX])
    return (tenant_id, now, *row[:TAGS_INDEX], tags, *row[TAGS_INDEX + 1 :])


def _is_retryable(exc: Exception) -> bool:
    """A duplicate event id (or a deadlock between two such inserts), not any other failure."""
    cause = exc if isinstance(exc, psycopg_errors.Error) else exc.__cause__
    if isinstance(cause, psycopg_errors.UniqueViolation):
        return cause.diag.constraint_name == partitions.KEY_CONSTRAINT
    return isinstance(cause, psycopg_errors.DeadlockDetected)


def _write_portable(tenant_id: int, rows: list[EventRow]) -> int:
    """SQLite (the embedded default): INSERT … ON CONFLICT DO NOTHING per row in one
    transaction; SQLite allows one writer at a time, so summed row counts are exact."""
    ops = connection.ops
    now = ops.adapt_datetimefield_value(timezone.now())
    when = COLUMNS.index("occurred_at")
    money = (COLUMNS.index("cost"), COLUMNS.index("reported_cost"))
    sql = (
        f"INSERT INTO {TABLE} (tenant_id, received_at, {_COLUMN_LIST}) VALUES ("  # noqa: S608 - constants only
        + ", ".join(["%s"] * (len(COLUMNS) + 2))
        + ") ON CONFLICT (tenant_id, event_id) DO NOTHING"
    )
    params = []
    for row in rows:
        values = _json_tags(row)
        values[when] = ops.adapt_datetimefield_value(values[when])
        for index in money:
            if values[index] is not None:
                values[index] = ops.adapt_decimalfield_value(values[index], 20, 10)
        params.append([tenant_id, now, *values])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, params)
        return cursor.rowcount
